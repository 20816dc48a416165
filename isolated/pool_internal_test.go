package isolated

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// These tests run in the test binary, whose TestMain (main_test.go)
// serves the child role with a registry that has test.noop; the pools
// here use an empty registry, which any child satisfies.

const internalWait = 20 * time.Second

func internalPool(t *testing.T, cfg PoolConfig, h hooks) *Pool {
	t.Helper()
	cfg.Registry = stem.NewRegistry()
	cfg.Size = 1
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if h.signal == nil {
		h.signal = signalGroup
	}
	p, err := newPool(cfg, h)
	if err != nil {
		t.Fatalf("newPool: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// runNoop runs test.noop on p and returns its outcome.
func runNoop(t *testing.T, p *Pool) (json.RawMessage, error) {
	t.Helper()
	task := &stem.Task{Name: "test.noop", Isolated: func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }}
	tc := stem.NewTaskContext(context.Background(), stem.TaskInfo{ID: "n", Task: task.Name}, nil, nil)
	type outcome struct {
		res json.RawMessage
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := p.Execute(tc, task, &stemtype.Envelope{ID: "n", Task: task.Name}, nil)
		done <- outcome{res, err}
	}()
	select {
	case o := <-done:
		return o.res, o.err
	case <-time.After(internalWait):
		t.Fatalf("Execute did not return within %s", internalWait)
		return nil, nil
	}
}

// TestNoSignalAfterReap: once a child was reaped, its pid (and process
// group id) may belong to an unrelated process: stopping the child, as
// acquire does for one that died while idle, signals nothing.
func TestNoSignalAfterReap(t *testing.T) {
	t.Parallel()
	var (
		mu     sync.Mutex
		target *os.Process // the reaped child, once it was reaped
		late   []sig
	)
	p := internalPool(t, PoolConfig{}, hooks{signal: func(pr *os.Process, s sig) {
		mu.Lock()
		if pr == target {
			late = append(late, s)
		}
		mu.Unlock()
		signalGroup(pr, s)
	}})
	p.mu.Lock()
	c := p.idle[0]
	p.mu.Unlock()
	if err := c.cmd.Process.Kill(); err != nil { // the OOM killer, say
		t.Fatal(err)
	}
	select {
	case <-c.exited:
	case <-time.After(internalWait):
		t.Fatal("the killed child was not reaped")
	}
	mu.Lock()
	target = c.cmd.Process
	mu.Unlock()
	if _, err := runNoop(t, p); err != nil { // replaces the dead child
		t.Fatalf("test.noop: %v", err)
	}
	c.stop(false) // again: a no-op
	mu.Lock()
	defer mu.Unlock()
	if len(late) > 0 {
		t.Errorf("signals %v sent to the group of child %d after it was reaped", late, c.pid)
	}
}

// TestFrameAfterResultReplacesIdleChild: a child that sends something
// after its task's result (here the result again) is replaced before the
// next task, which succeeds, instead of failing that task.
func TestFrameAfterResultReplacesIdleChild(t *testing.T) {
	t.Parallel()
	results := make(chan struct{}, 16)
	p := internalPool(t, PoolConfig{Env: []string{"ISOLATED_TEST_ROGUE=double-result"}}, hooks{
		delivered: func(c *proc, in inbound) {
			if in.m != nil && in.m.Type == typeResult {
				results <- struct{}{}
			}
		}})
	if res, err := runNoop(t, p); err != nil || string(res) != `"first"` {
		t.Fatalf("first task: %s, %v", res, err)
	}
	select {
	case <-results:
	case <-time.After(internalWait):
		t.Fatal("no result delivered")
	}
	select {
	case <-results: // the second result waits for the next acquire
	case <-time.After(internalWait):
		t.Fatal("the rogue child's second result never arrived")
	}
	if res, err := runNoop(t, p); err != nil || string(res) != `"first"` {
		t.Errorf("second task: %s, %v; want it run by a fresh child", res, err)
	}
	if s := p.Stats(); s.Started != 2 {
		t.Errorf("stats = %+v, want the rogue child replaced", s)
	}
}

// leaseRecorder records the lease extensions asked of it.
type leaseRecorder struct{ leases []time.Duration }

func (r *leaseRecorder) Heartbeat() error { return nil }
func (r *leaseRecorder) ExtendLease(d time.Duration) error {
	r.leases = append(r.leases, d)
	return nil
}
func (r *leaseRecorder) Progress(float64, json.RawMessage) error { return nil }

// TestExtendLeaseCapped: a child cannot ask for more than maxExtendLease,
// nor overflow the duration.
func TestExtendLeaseCapped(t *testing.T) {
	t.Parallel()
	rec := &leaseRecorder{}
	tc := stem.NewTaskContext(context.Background(), stem.TaskInfo{ID: "x"}, rec, nil)
	for _, ms := range []int64{1500, math.MaxInt64} {
		if err := checkpoint(tc, &message{Type: typeExtendLease, Run: 1, Seq: 1, Ms: ms}); err != nil {
			t.Fatal(err)
		}
	}
	if len(rec.leases) != 2 || rec.leases[0] != 1500*time.Millisecond || rec.leases[1] != maxExtendLease {
		t.Errorf("leases asked of the worker = %v, want [1.5s %s]", rec.leases, maxExtendLease)
	}
}
