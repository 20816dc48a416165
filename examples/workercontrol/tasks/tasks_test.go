package tasks_test

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"testing"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/examples/workercontrol/tasks"
	"github.com/stem-go/stem/isolated"
	"github.com/stem-go/stem/stemtest"
	"github.com/stem-go/stem/stemtype"
)

// registry builds the example's registry, as its main does in every role.
func registry() *stem.Registry {
	reg := stem.NewRegistry()
	tasks.Register(reg)
	return reg
}

// TestMain serves the child role when an isolated.Pool of a test started
// this binary, as the example's main does through stemcli.Main.
func TestMain(m *testing.M) {
	isolated.ServeIfChild(registry())
	os.Exit(m.Run())
}

func TestTasksFinish(t *testing.T) {
	reg := registry()
	for _, tc := range []struct {
		task       string
		args       any
		want       string
		heartbeats int
	}{
		{"reports.build", tasks.ReportArgs{Chunks: []string{"a\nb", "c"}}, `{"chunks":2,"lines":3}`, 2},
		{"images.render", tasks.RenderArgs{Tiles: 12}, `{"checksum":506,"tiles":12}`, 3},
		{"items.crunch", tasks.CrunchArgs{Items: []float64{1, 2, 3}}, `14`, 1},
	} {
		out := stemtest.Run(t, reg, tc.task, tc.args, stemtest.RunOptions{})
		if out.State != stemtype.StateSucceeded || string(out.Result) != tc.want || out.Heartbeats != tc.heartbeats {
			t.Errorf("%s: %s %s (%v), %d heartbeats; want succeeded %s, %d heartbeats",
				tc.task, out.State, out.Result, out.Err, out.Heartbeats, tc.want, tc.heartbeats)
		}
	}
}

// TestTasksStopWhenTerminated: a terminate revoke that reaches a task's
// first checkpoint ends it cancelled, with an error matching
// stem.ErrTaskRevoked, before it does the rest of its work.
func TestTasksStopWhenTerminated(t *testing.T) {
	reg := registry()
	for _, tc := range []struct {
		task string
		args any
	}{
		{"reports.build", tasks.ReportArgs{Chunks: []string{"a", "b", "c"}}},
		{"images.render", tasks.RenderArgs{Tiles: 100}},
		{"items.crunch", tasks.CrunchArgs{Items: make([]float64, 100)}},
	} {
		out := stemtest.Run(t, reg, tc.task, tc.args, stemtest.RunOptions{TerminateAt: 1})
		if out.State != stemtype.StateCancelled || !errors.Is(out.Err, stem.ErrTaskRevoked) || out.Heartbeats != 0 {
			t.Errorf("%s: %s (%v) after %d heartbeats; want cancelled, ErrTaskRevoked, at the first checkpoint",
				tc.task, out.State, out.Err, out.Heartbeats)
		}
	}
}

// TestRenderInChildProcess runs images.render as the example's worker
// does: in a child process of this test binary, through an isolated.Pool.
func TestRenderInChildProcess(t *testing.T) {
	reg := registry()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	pool, err := isolated.NewPool(isolated.PoolConfig{Registry: reg, Size: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pool.Close() })
	w := stemtest.NewWorker(t, reg, stem.WorkerConfig{Executor: pool, Logger: quiet})
	res := w.Wait(w.Enqueue("images.render", tasks.RenderArgs{Tiles: 12}, stem.EnqueueOptions{}))
	if res.State != stemtype.StateSucceeded || string(res.Result) != `{"checksum":506,"tiles":12}` {
		t.Fatalf("images.render in a child: %s %s %+v", res.State, res.Result, res.Error)
	}
	if res.Progress == nil {
		t.Errorf("no progress recorded: the child's checkpoints did not reach the worker")
	}
}
