package stemtest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtest"
	"github.com/stem-go/stem/stemtype"
)

type addArgs struct {
	A, B int
}

func TestRunRecordsResultAndCheckpoints(t *testing.T) {
	reg := stem.NewRegistry()
	stem.Register(reg, "add", func(tc *stem.TaskContext, a addArgs) (any, error) {
		if err := tc.Heartbeat(); err != nil {
			return nil, err
		}
		if err := tc.ExtendLease(time.Minute); err != nil {
			return nil, err
		}
		if err := tc.Progress(50, map[string]int{"done": 1}); err != nil {
			return nil, err
		}
		if tc.TaskID() != "t1" || tc.TaskName() != "add" || tc.Queue() != "math" || tc.Attempt() != 2 {
			return nil, fmt.Errorf("identity %s %s %s %d", tc.TaskID(), tc.TaskName(), tc.Queue(), tc.Attempt())
		}
		return a.A + a.B, nil
	}, stem.TaskOptions{Queue: "math", MaxRetries: 5})

	out := stemtest.Run(t, reg, "add", addArgs{A: 2, B: 3}, stemtest.RunOptions{ID: "t1", Attempt: 2})
	if out.State != stemtype.StateSucceeded || out.Err != nil || string(out.Result) != "5" {
		t.Fatalf("got %s %q %v, want succeeded 5", out.State, out.Result, out.Err)
	}
	var sum int
	if err := out.Decode(&sum); err != nil || sum != 5 {
		t.Fatalf("Decode: %d %v", sum, err)
	}
	if out.Heartbeats != 1 || !slices.Equal(out.LeaseExtensions, []time.Duration{time.Minute}) ||
		len(out.Progress) != 1 || out.Progress[0].Percent != 50 || string(out.Progress[0].Data) != `{"done":1}` {
		t.Fatalf("checkpoints: %d heartbeats, extensions %v, progress %+v", out.Heartbeats, out.LeaseExtensions, out.Progress)
	}
}

func TestRunDecidesRetriesAsAWorker(t *testing.T) {
	boom := errors.New("boom")
	reg := stem.NewRegistry()
	stem.Register(reg, "fails", func(tc *stem.TaskContext, _ stem.Args) (any, error) { return nil, boom },
		stem.TaskOptions{MaxRetries: 2, RetryPolicy: stem.ExponentialBackoff{Base: time.Second}})
	stem.Register(reg, "hopeless", func(tc *stem.TaskContext, _ stem.Args) (any, error) { return nil, stem.NoRetry(boom) },
		stem.TaskOptions{MaxRetries: 2})
	stem.Register(reg, "later", func(tc *stem.TaskContext, _ stem.Args) (any, error) { return nil, stem.RetryAfter(7*time.Second, boom) },
		stem.TaskOptions{MaxRetries: 2})
	stem.Register(reg, "panics", func(tc *stem.TaskContext, _ stem.Args) (any, error) { panic("oops") },
		stem.TaskOptions{MaxRetries: 1, RetryPolicy: stem.ExponentialBackoff{Base: time.Second}})
	zero := 0
	for _, tc := range []struct {
		name    string
		task    string
		opts    stemtest.RunOptions
		state   stemtype.State
		retryIn time.Duration
	}{
		{"first failure retries", "fails", stemtest.RunOptions{}, stemtype.StateRetry, time.Second},
		{"second retry doubles the delay", "fails", stemtest.RunOptions{Attempt: 1}, stemtype.StateRetry, 2 * time.Second},
		{"no retries left", "fails", stemtest.RunOptions{Attempt: 2}, stemtype.StateFailed, 0},
		{"MaxRetries override", "fails", stemtest.RunOptions{MaxRetries: &zero}, stemtype.StateFailed, 0},
		{"NoRetry", "hopeless", stemtest.RunOptions{}, stemtype.StateFailed, 0},
		{"RetryAfter", "later", stemtest.RunOptions{}, stemtype.StateRetry, 7 * time.Second},
		{"panic retries", "panics", stemtest.RunOptions{}, stemtype.StateRetry, time.Second},
		{"panic without retries", "panics", stemtest.RunOptions{Attempt: 1}, stemtype.StateFailed, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := stemtest.Run(t, reg, tc.task, nil, tc.opts)
			if out.State != tc.state || out.RetryIn != tc.retryIn || out.Err == nil || out.Result != nil {
				t.Fatalf("got %s in %s (%v), want %s in %s", out.State, out.RetryIn, out.Err, tc.state, tc.retryIn)
			}
			var pe *stem.PanicError
			if isPanic := errors.As(out.Err, &pe); isPanic != (tc.task == "panics") || (!isPanic && !errors.Is(out.Err, boom)) {
				t.Fatalf("error %v", out.Err)
			}
		})
	}
}

func TestRunTerminateAtACheckpoint(t *testing.T) {
	reg := stem.NewRegistry()
	var ctxErr error
	stem.Register(reg, "loop", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		for i := 0; ; i++ {
			var err error
			if i%2 == 0 {
				err = tc.Heartbeat()
			} else {
				err = tc.Progress(float64(i), nil)
			}
			if err != nil {
				ctxErr = context.Cause(tc)
				return nil, err
			}
		}
	}, stem.TaskOptions{MaxRetries: 3})

	out := stemtest.Run(t, reg, "loop", nil, stemtest.RunOptions{TerminateAt: 3})
	var rev *stem.RevokedError
	if out.State != stemtype.StateCancelled || !errors.Is(out.Err, stem.ErrTaskRevoked) || !errors.As(ctxErr, &rev) {
		t.Fatalf("got %s (%v), context cause %v; want cancelled by a revoke", out.State, out.Err, ctxErr)
	}
	if out.Heartbeats != 1 || len(out.Progress) != 1 {
		t.Fatalf("%d heartbeats and %d progress reports before the third checkpoint, want 1 and 1", out.Heartbeats, len(out.Progress))
	}

	// A handler that swallows the terminate is cancelled all the same.
	stem.Register(reg, "stubborn", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		_ = tc.Heartbeat()
		return "done anyway", nil
	}, stem.TaskOptions{})
	out = stemtest.Run(t, reg, "stubborn", nil, stemtest.RunOptions{TerminateAt: 1})
	if out.State != stemtype.StateCancelled || !errors.Is(out.Err, stem.ErrTaskRevoked) || out.Result != nil {
		t.Fatalf("a handler that ignores the terminate: %s %q (%v), want cancelled", out.State, out.Result, out.Err)
	}
}

func TestRunTimeLimit(t *testing.T) {
	reg := stem.NewRegistry()
	stem.Register(reg, "slow", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		<-tc.Done()
		return nil, tc.Heartbeat()
	}, stem.TaskOptions{TimeLimit: time.Millisecond})
	out := stemtest.Run(t, reg, "slow", nil, stemtest.RunOptions{})
	if out.State != stemtype.StateFailed || !errors.Is(out.Err, stem.ErrTimeLimit) {
		t.Fatalf("got %s (%v), want failed by the time limit", out.State, out.Err)
	}
}

func TestRunArgsAndResults(t *testing.T) {
	reg := stem.NewRegistry()
	stem.Register(reg, "raw", func(tc *stem.TaskContext, a stem.Args) (any, error) { return a, nil }, stem.TaskOptions{})
	stem.Register(reg, "typed", func(tc *stem.TaskContext, a addArgs) (any, error) { return a.A, nil }, stem.TaskOptions{MaxRetries: 3})
	stem.Register(reg, "unencodable", func(tc *stem.TaskContext, _ stem.Args) (any, error) { return func() {}, nil }, stem.TaskOptions{MaxRetries: 3})
	stem.Register(reg, "isolated", func(tc *stem.TaskContext, a addArgs) (any, error) { return a.B, nil }, stem.TaskOptions{Isolated: true})

	if out := stemtest.Run(t, reg, "raw", json.RawMessage(`{"x": [1, 2]}`), stemtest.RunOptions{}); string(out.Result) != `{"x": [1, 2]}` {
		t.Fatalf("Args are passed as they are: got %q (%v)", out.Result, out.Err)
	}
	out := stemtest.Run(t, reg, "typed", json.RawMessage(`{"A": "not a number"}`), stemtest.RunOptions{})
	if out.State != stemtype.StateFailed || !stem.IsNoRetry(out.Err) {
		t.Fatalf("arguments that do not decode: %s (%v), want failed without retry", out.State, out.Err)
	}
	if out := stemtest.Run(t, reg, "unencodable", nil, stemtest.RunOptions{}); out.State != stemtype.StateFailed || out.Err == nil {
		t.Fatalf("a result that does not encode: %s (%v), want failed", out.State, out.Err)
	}
	if out := stemtest.Run(t, reg, "isolated", addArgs{B: 9}, stemtest.RunOptions{}); string(out.Result) != "9" {
		t.Fatalf("an isolated entrypoint: %s %q (%v)", out.State, out.Result, out.Err)
	}
}

// TestRunAgreesWithAWorker runs the same tasks through Run and through a
// real worker: the states must agree, or Run lies about the worker.
func TestRunAgreesWithAWorker(t *testing.T) {
	reg := stem.NewRegistry()
	stem.Register(reg, "ok", func(tc *stem.TaskContext, a addArgs) (any, error) { return a.A * 10, nil }, stem.TaskOptions{})
	stem.Register(reg, "err", func(tc *stem.TaskContext, _ stem.Args) (any, error) { return nil, errors.New("no") }, stem.TaskOptions{})
	stem.Register(reg, "panic", func(tc *stem.TaskContext, _ stem.Args) (any, error) { panic("no") }, stem.TaskOptions{})
	stem.Register(reg, "noretry", func(tc *stem.TaskContext, _ stem.Args) (any, error) { return nil, stem.NoRetry(errors.New("no")) },
		stem.TaskOptions{MaxRetries: 3})
	stem.Register(reg, "badargs", func(tc *stem.TaskContext, a addArgs) (any, error) { return nil, nil }, stem.TaskOptions{MaxRetries: 3})
	stem.Register(reg, "unencodable", func(tc *stem.TaskContext, _ stem.Args) (any, error) { return make(chan int), nil },
		stem.TaskOptions{MaxRetries: 3})
	stem.Register(reg, "raw", func(tc *stem.TaskContext, a stem.Args) (any, error) { return a, nil }, stem.TaskOptions{})
	stem.Register(reg, "flaky", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		if tc.Attempt() < 2 {
			return nil, errors.New("not yet")
		}
		return tc.Attempt(), nil
	}, stem.TaskOptions{MaxRetries: 2, RetryPolicy: stem.ExponentialBackoff{Base: time.Millisecond}})

	w := stemtest.NewWorker(t, reg, stem.WorkerConfig{Concurrency: 4})
	cases := []struct {
		task string
		args any
	}{
		{"ok", addArgs{A: 4}}, {"err", nil}, {"panic", nil}, {"noretry", nil},
		{"badargs", json.RawMessage(`[1]`)}, {"unencodable", nil}, {"raw", json.RawMessage(`{"k":true}`)},
		{"flaky", nil},
	}
	for _, c := range cases {
		w.Enqueue(c.task, c.args, stem.EnqueueOptions{})
	}
	got := w.Drain()
	for i, c := range cases {
		var out *stemtest.Outcome
		for attempt := 0; ; attempt++ { // follow the retries the worker made
			out = stemtest.Run(t, reg, c.task, c.args, stemtest.RunOptions{Attempt: attempt})
			if out.State != stemtype.StateRetry {
				break
			}
		}
		if got[i].State != out.State || string(got[i].Result) != string(out.Result) {
			t.Errorf("%s: the worker recorded %s %q, Run says %s %q (%v)", c.task, got[i].State, got[i].Result, out.State, out.Result, out.Err)
		}
	}
}

func TestWorkerDrainReturnsResultsInOrder(t *testing.T) {
	reg := stem.NewRegistry()
	stem.Register(reg, "double", func(tc *stem.TaskContext, n int) (any, error) { return 2 * n, nil }, stem.TaskOptions{})
	w := stemtest.NewWorker(t, reg, stem.WorkerConfig{Concurrency: 3})
	var ids []string
	for n := range 10 {
		ids = append(ids, w.Enqueue("double", n, stem.EnqueueOptions{}))
	}
	res := w.Drain()
	if len(res) != 10 {
		t.Fatalf("%d results, want 10", len(res))
	}
	for n, r := range res {
		if r.ID != ids[n] || r.State != stemtype.StateSucceeded || string(r.Result) != fmt.Sprint(2*n) {
			t.Fatalf("result %d: %+v", n, r)
		}
	}
}

func TestWorkerTerminateRunningTask(t *testing.T) {
	reg := stem.NewRegistry()
	started := make(chan struct{})
	stem.Register(reg, "wait", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		close(started)
		<-tc.Done()
		return nil, tc.Heartbeat()
	}, stem.TaskOptions{MaxRetries: 3})
	w := stemtest.NewWorker(t, reg, stem.WorkerConfig{})
	id := w.Enqueue("wait", nil, stem.EnqueueOptions{})
	<-started
	if _, err := w.Controller().Revoke(t.Context(), stem.Target{}, stem.RevokeOptions{TaskIDs: []string{id}, Terminate: true, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	if res := w.Wait(id); res.State != stemtype.StateCancelled || res.Meta[stemtype.MetaRevokedReason] != "test" {
		t.Fatalf("got %+v, want cancelled with the reason", res)
	}
}

func TestWorkersDoNotShareTasks(t *testing.T) {
	reg := stem.NewRegistry()
	stem.Register(reg, "id", func(tc *stem.TaskContext, _ stem.Args) (any, error) { return tc.TaskID(), nil }, stem.TaskOptions{})
	a := stemtest.NewWorker(t, reg, stem.WorkerConfig{})
	b := stemtest.NewWorker(t, reg, stem.WorkerConfig{})
	id := a.Enqueue("id", nil, stem.EnqueueOptions{})
	a.Wait(id)
	if _, err := b.Client().Status(t.Context(), id); !errors.Is(err, stem.ErrNotFound) {
		t.Fatalf("a task of one stemtest.Worker is visible to another: %v", err)
	}
}
