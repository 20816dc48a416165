package isolated_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/isolated"
	"github.com/stem-go/stem/stemtype"
)

// TestNewPoolInAChildFails: a program that forgets ServeIfChild and builds
// a pool makes its children build pools too. NewPool refuses in a child,
// so the chain stops at the first child, whose output the parent's error
// quotes with the hint.
func TestNewPoolInAChildFails(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	logger, _ := testLogger(t)
	_, err := isolated.NewPool(isolated.PoolConfig{Registry: testRegistry(), Logger: logger,
		Env: []string{envForget + "=" + dir}})
	for _, w := range []string{"exited before its hello", "NewPool called in an isolated child", "ServeIfChild"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("NewPool: %v, want it to mention %q", err, w)
		}
	}
	entries, rerr := os.ReadDir(dir)
	if rerr != nil {
		t.Fatal(rerr)
	}
	if len(entries) != 1 {
		t.Errorf("%d forgetful processes started, want only the pool's child", len(entries))
	}
	for _, e := range entries {
		pid, _ := strconv.Atoi(e.Name())
		awaitExit(t, pid)
	}
}

// TestRevokeKeepsTheTimeLimit: a terminate revoke without kill-after
// cancels the task's context, which also ends the time limit's context
// built under it (as Worker.process builds them); a task that ignores
// the revoke is still killed at its deadline.
func TestRevokeKeepsTheTimeLimit(t *testing.T) {
	t.Parallel()
	p := newPool(t, isolated.PoolConfig{Size: 1})
	parent, revoke := context.WithCancelCause(context.Background())
	limited, stop := context.WithTimeoutCause(parent, 2*time.Second, stem.ErrTimeLimit)
	defer stop()
	c := start(t, p, limited, "test.spin", "")
	c.sig.await(t)
	rev := &stem.RevokedError{TaskID: "spin", Reason: "runaway"}
	revoke(rev)
	if !errors.Is(context.Cause(limited), stem.ErrTaskRevoked) {
		t.Fatalf("test setup: the time limit passed before the revoke (cause %v)", context.Cause(limited))
	}
	_, err := c.wait(t)
	if !errors.Is(err, stem.ErrTimeLimit) || !errors.Is(err, stem.ErrTaskRevoked) || !strings.Contains(err.Error(), "killed") {
		t.Errorf("error = %v, want a kill at the time limit, after the revoke", err)
	}
}

// blockingLease is a stem.TaskSignals whose ExtendLease blocks until
// release is closed, as one waiting for an unresponsive broker would.
type blockingLease struct {
	entered chan struct{}
	release chan struct{}
}

func (b *blockingLease) Heartbeat() error { return nil }

func (b *blockingLease) ExtendLease(time.Duration) error {
	b.entered <- struct{}{}
	<-b.release
	return nil
}

func (b *blockingLease) Progress(float64, json.RawMessage) error { return nil }

// TestSlowCheckpointDelaysNoKill: the time limit kills a task whose
// child's ExtendLease is still under way in the worker.
func TestSlowCheckpointDelaysNoKill(t *testing.T) {
	t.Parallel()
	p := newPool(t, isolated.PoolConfig{Size: 1})
	sig := &blockingLease{entered: make(chan struct{}, 1), release: make(chan struct{})}
	t.Cleanup(func() { close(sig.release) }) // before the pool's Close
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	const name = "test.extend-then-spin"
	task, _ := testRegistry().Lookup(name)
	tc := stem.NewTaskContext(ctx, stem.TaskInfo{ID: "slow", Task: name}, sig, quietLogger())
	done := make(chan error, 1)
	go func() {
		_, err := p.Execute(tc, task, &stemtype.Envelope{ID: "slow", Task: name}, nil)
		done <- err
	}()
	select {
	case <-sig.entered:
	case <-time.After(waitTimeout):
		t.Fatal("the child's ExtendLease never reached the worker")
	}
	cancel(stem.ErrTimeLimit)
	select {
	case err := <-done:
		if !errors.Is(err, stem.ErrTimeLimit) || !strings.Contains(err.Error(), "killed") {
			t.Errorf("error = %v, want a kill at the time limit", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Execute waits for the ExtendLease under way instead of killing the task at its time limit")
	}
}

// TestChildOfAnotherBuildIsRetryable: a child whose hello lacks an
// isolated entrypoint of the worker's registry (the binary at Path was
// replaced by another build) runs no task: the task fails with an error
// that is retried, on a worker of the right build say.
func TestChildOfAnotherBuildIsRetryable(t *testing.T) {
	t.Parallel()
	reg := testRegistry()
	p := newPool(t, isolated.PoolConfig{Registry: reg, Size: 1, MaxTasksPerChild: 1})
	childPID(t, p) // retires the child NewPool checked
	// The worker's build has a task the next child's lacks.
	stem.Register(reg, "only.in.worker", func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }, stem.TaskOptions{Isolated: true})
	_, err := execute(t, p, "test.pid", "")
	if err == nil || !strings.Contains(err.Error(), "no isolated entrypoint for only.in.worker") {
		t.Fatalf("error = %v, want the child refused for lacking only.in.worker", err)
	}
	if stem.IsNoRetry(err) {
		t.Errorf("error = %v is not retried, want a retryable error", err)
	}
	if s := p.Stats(); s.Live != 0 {
		t.Errorf("stats = %+v, want the refused child stopped", s)
	}
}

// TestGrandchildrenEndWithTheirChild: processes a task started end when
// its child is retired gracefully, by Close or MaxTasksPerChild.
func TestGrandchildrenEndWithTheirChild(t *testing.T) {
	t.Parallel()
	grandchild := func(t *testing.T, p *isolated.Pool) int {
		t.Helper()
		res, err := execute(t, p, "test.grandchild", "")
		if err != nil {
			t.Fatalf("test.grandchild: %v", err)
		}
		var r pidResult
		if err := json.Unmarshal(res, &r); err != nil || r.PID == 0 {
			t.Fatalf("test.grandchild result %s: %v", res, err)
		}
		return r.PID
	}
	t.Run("Close", func(t *testing.T) {
		t.Parallel()
		p := newPool(t, isolated.PoolConfig{Size: 1})
		pid := grandchild(t, p)
		p.Close()
		awaitExit(t, pid)
	})
	t.Run("MaxTasksPerChild", func(t *testing.T) {
		t.Parallel()
		p := newPool(t, isolated.PoolConfig{Size: 1, MaxTasksPerChild: 1})
		pid := grandchild(t, p) // retires the child before Execute returns
		awaitExit(t, pid)
	})
}
