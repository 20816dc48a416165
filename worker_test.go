package stem_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemtype"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// env is one in-memory deployment: a hub, its drivers and a client.
type env struct {
	t       *testing.T
	hub     *stemmem.Hub
	ns      string
	broker  stemdriver.Broker
	results stemdriver.ResultBackend
	revokes stemdriver.RevokeStore
	control stemdriver.ControlTransport
	client  *stem.Client
	reg     *stem.Registry
}

func newEnv(t *testing.T) *env {
	t.Helper()
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "test", Logger: quiet()}
	e := &env{t: t, hub: hub, ns: "test", broker: hub.Broker(opts), results: hub.Results(opts),
		revokes: hub.Revokes(), control: hub.Control(opts), reg: stem.NewRegistry()}
	var err error
	e.client, err = stem.NewClient(stem.ClientConfig{Broker: e.broker, Results: e.results, Registry: e.reg})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func quiet() *slog.Logger {
	if os.Getenv("STEM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startWorker runs a worker until the test ends (or stop is called) and
// returns it with a stop function that waits for Run to return.
func (e *env) startWorker(cfg stem.WorkerConfig) (*stem.Worker, func()) {
	e.t.Helper()
	cfg.Registry, cfg.Broker, cfg.Results, cfg.Namespace = e.reg, e.broker, e.results, e.ns
	if cfg.Revokes == nil {
		cfg.Revokes = e.revokes
	}
	if cfg.Control == nil {
		cfg.Control = e.control
	}
	if cfg.Logger == nil {
		cfg.Logger = quiet()
	}
	if cfg.ClaimWait == 0 {
		cfg.ClaimWait = 50 * time.Millisecond
	}
	w, err := stem.NewWorker(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return w, systemtest.RunWorker(e.t, w)
}

func (e *env) enqueue(task string, args any, opts stem.EnqueueOptions) string {
	e.t.Helper()
	id, err := e.client.Enqueue(context.Background(), task, args, opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

func (e *env) wait(id string) *stemtype.TaskResult {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := e.client.Wait(ctx, id)
	if err != nil {
		e.t.Fatalf("wait for %s: %v", id, err)
	}
	return res
}

// waitState polls until the task reaches state (used for non-final states).
func (e *env) waitState(id string, state stemtype.State) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if r, err := e.results.Get(context.Background(), id); err == nil && r.State == state {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	e.t.Fatalf("task %s never reached %s", id, state)
}

func TestRetryWithBackoffToFinalFailure(t *testing.T) {
	e := newEnv(t)
	var runs atomic.Int32
	var attempts []int
	attemptCh := make(chan int, 10)
	stem.Register(e.reg, "always-fails", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		runs.Add(1)
		attemptCh <- tc.Attempt()
		return nil, errors.New("boom")
	}, stem.TaskOptions{
		MaxRetries:  3,
		RetryPolicy: stem.ExponentialBackoff{Base: 10 * time.Millisecond, Max: 40 * time.Millisecond},
	})
	_, stop := e.startWorker(stem.WorkerConfig{})
	id := e.enqueue("always-fails", nil, stem.EnqueueOptions{})
	res := e.wait(id)
	stop()
	close(attemptCh)
	for a := range attemptCh {
		attempts = append(attempts, a)
	}
	if res.State != stemtype.StateFailed || res.Error == nil || res.Error.Message != "boom" || res.Attempt != 3 {
		t.Fatalf("final result %+v (error %+v)", res, res.Error)
	}
	if got := runs.Load(); got != 4 {
		t.Fatalf("ran %d times, want 4 (1 + 3 retries)", got)
	}
	for i, a := range attempts {
		if a != i {
			t.Fatalf("attempts %v, want 0,1,2,3", attempts)
		}
	}
	if n, _ := e.broker.Depth(context.Background(), "default"); n != 0 {
		t.Fatalf("queue depth after final failure = %d, want 0", n)
	}
}

func TestRetrySucceedsAndNoRetryFailsAtOnce(t *testing.T) {
	e := newEnv(t)
	var flaky atomic.Int32
	stem.Register(e.reg, "flaky", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		if flaky.Add(1) < 3 {
			return nil, errors.New("not yet")
		}
		return "ok", nil
	}, stem.TaskOptions{MaxRetries: 5,
		RetryPolicy: stem.ExponentialBackoff{Base: time.Millisecond}})
	var final atomic.Int32
	stem.Register(e.reg, "permanent", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		final.Add(1)
		return nil, stem.NoRetry(errors.New("bad input"))
	}, stem.TaskOptions{MaxRetries: 5})
	e.startWorker(stem.WorkerConfig{})
	if res := e.wait(e.enqueue("flaky", nil, stem.EnqueueOptions{})); res.State != stemtype.StateSucceeded || res.Attempt != 2 {
		t.Fatalf("flaky: %+v", res)
	}
	if res := e.wait(e.enqueue("permanent", nil, stem.EnqueueOptions{})); res.State != stemtype.StateFailed || final.Load() != 1 {
		t.Fatalf("permanent: %+v after %d runs", res, final.Load())
	}
}

func TestPanickingHandlerIsRecordedFailure(t *testing.T) {
	e := newEnv(t)
	stem.Register(e.reg, "panics", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		var m map[string]int
		m["x"] = 1 // nil map write
		return nil, nil
	}, stem.TaskOptions{})
	stem.Register(e.reg, "echo", func(tc *stem.TaskContext, a stem.Args) (any, error) {
		return json.RawMessage(a), nil
	}, stem.TaskOptions{})
	e.startWorker(stem.WorkerConfig{Concurrency: 1})
	res := e.wait(e.enqueue("panics", nil, stem.EnqueueOptions{}))
	if res.State != stemtype.StateFailed || res.Error == nil || res.Error.Kind != "panic" ||
		!strings.Contains(res.Error.Message, "assignment to entry in nil map") {
		t.Fatalf("got %+v error %+v", res, res.Error)
	}
	// The worker survived and still runs tasks.
	if res := e.wait(e.enqueue("echo", map[string]int{"n": 1}, stem.EnqueueOptions{})); res.State != stemtype.StateSucceeded || string(res.Result) != `{"n":1}` {
		t.Fatalf("after panic: %+v", res)
	}
}

func TestUnknownTaskIsRecordedFailure(t *testing.T) {
	e := newEnv(t)
	stem.Register(e.reg, "known", func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }, stem.TaskOptions{})
	e.startWorker(stem.WorkerConfig{})
	res := e.wait(e.enqueue("no.such.task", nil, stem.EnqueueOptions{MaxRetries: new(5)}))
	if res.State != stemtype.StateFailed || res.Error == nil || res.Error.Kind != "unknown_task" ||
		!strings.Contains(res.Error.Message, `"no.such.task"`) || res.Attempt != 0 {
		t.Fatalf("got %+v error %+v", res, res.Error)
	}
	if n, _ := e.broker.Depth(context.Background(), "default"); n != 0 {
		t.Fatalf("unknown task left in queue: depth %d", n)
	}
}

func TestCountdownDelaysTask(t *testing.T) {
	e := newEnv(t)
	stem.Register(e.reg, "when", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		return time.Now().UnixNano(), nil
	}, stem.TaskOptions{})
	e.startWorker(stem.WorkerConfig{})
	before := time.Now()
	res := e.wait(e.enqueue("when", nil, stem.EnqueueOptions{Countdown: 150 * time.Millisecond}))
	var ranAt int64
	json.Unmarshal(res.Result, &ranAt)
	if ran := time.Unix(0, ranAt); ran.Before(before.Add(150 * time.Millisecond)) {
		t.Fatalf("task ran %s after enqueue, before its countdown", ran.Sub(before))
	}
}

func TestTimeLimitFailsAttempt(t *testing.T) {
	e := newEnv(t)
	stem.Register(e.reg, "slow", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		<-tc.Done()
		if !errors.Is(context.Cause(tc), stem.ErrTimeLimit) {
			return nil, errors.New("cause is not ErrTimeLimit")
		}
		return nil, tc.Err()
	}, stem.TaskOptions{TimeLimit: 50 * time.Millisecond})
	e.startWorker(stem.WorkerConfig{})
	res := e.wait(e.enqueue("slow", nil, stem.EnqueueOptions{}))
	if res.State != stemtype.StateFailed || res.Error == nil || res.Error.Kind != "time_limit" {
		t.Fatalf("got %+v error %+v", res, res.Error)
	}
}

// A live worker renews the leases of long tasks, so a task that outlives
// its lease many times over is not re-claimed by another worker.
func TestLeaseRenewedWhileTaskRuns(t *testing.T) {
	e := newEnv(t)
	release := make(chan struct{})
	var runs atomic.Int32
	stem.Register(e.reg, "long", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		runs.Add(1)
		<-release
		return nil, nil
	}, stem.TaskOptions{})
	// The lease leaves the renewer (a wake-up every quarter lease, a renewal
	// once a third of it has passed) several hundred milliseconds of slack,
	// so a loaded -race run does not lapse it through scheduling delay.
	e.startWorker(stem.WorkerConfig{ID: "a", Lease: time.Second})
	id := e.enqueue("long", nil, stem.EnqueueOptions{})
	e.waitState(id, stemtype.StateStarted)
	// Another consumer keeps trying to claim for several lease periods.
	deadline := time.Now().Add(2500 * time.Millisecond)
	for time.Now().Before(deadline) {
		ds, err := e.broker.Claim(context.Background(), stemdriver.ClaimRequest{Queues: []string{"default"},
			Consumer: "thief", Max: 1, Lease: time.Second, Wait: 50 * time.Millisecond})
		if err != nil || len(ds) != 0 {
			t.Fatalf("renewed task was claimed by another consumer: %v %v", ds, err)
		}
	}
	close(release)
	if res := e.wait(id); res.State != stemtype.StateSucceeded || runs.Load() != 1 {
		t.Fatalf("got %+v after %d runs", res, runs.Load())
	}
}

func TestGracefulShutdownFinishesInflightTask(t *testing.T) {
	e := newEnv(t)
	started := make(chan struct{})
	stem.Register(e.reg, "finishing", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		close(started)
		time.Sleep(100 * time.Millisecond) // the task's own work, outliving the shutdown signal
		return "finished", tc.Err()
	}, stem.TaskOptions{})
	_, stop := e.startWorker(stem.WorkerConfig{ShutdownTimeout: 10 * time.Second})
	id := e.enqueue("finishing", nil, stem.EnqueueOptions{})
	<-started
	stop() // returns only after Run returned
	res, err := e.results.Get(context.Background(), id)
	if err != nil || res.State != stemtype.StateSucceeded || string(res.Result) != `"finished"` {
		t.Fatalf("after shutdown: %+v %v", res, err)
	}
	if n, _ := e.broker.Depth(context.Background(), "default"); n != 0 {
		t.Fatalf("depth %d after a finished task", n)
	}
}

func TestShutdownPastGraceReleasesTaskToAnotherWorker(t *testing.T) {
	e := newEnv(t)
	first := make(chan struct{})
	var runs atomic.Int32
	stem.Register(e.reg, "stubborn", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		if runs.Add(1) == 1 {
			close(first)
			<-tc.Done()
			if !errors.Is(context.Cause(tc), stem.ErrWorkerShutdown) {
				return nil, errors.New("cause is not ErrWorkerShutdown")
			}
			return nil, tc.Err()
		}
		return "second run", nil
	}, stem.TaskOptions{})
	_, stop := e.startWorker(stem.WorkerConfig{ID: "w1", ShutdownTimeout: 50 * time.Millisecond})
	id := e.enqueue("stubborn", nil, stem.EnqueueOptions{})
	<-first
	stop()
	// Released, not failed: nothing lost, and another worker runs it.
	if n, _ := e.broker.Depth(context.Background(), "default"); n != 1 {
		t.Fatalf("depth %d after shutdown, want the task released (1)", n)
	}
	e.startWorker(stem.WorkerConfig{ID: "w2"})
	res := e.wait(id)
	if res.State != stemtype.StateSucceeded || res.WorkerID != "w2" || res.Attempt != 0 {
		t.Fatalf("got %+v", res)
	}
}

func TestArgumentsThatDoNotDecodeFailWithoutRetry(t *testing.T) {
	e := newEnv(t)
	type args struct{ N int }
	stem.Register(e.reg, "typed", func(tc *stem.TaskContext, a args) (any, error) { return a.N, nil }, stem.TaskOptions{MaxRetries: 3})
	e.startWorker(stem.WorkerConfig{})
	res := e.wait(e.enqueue("typed", json.RawMessage(`{"N":"not a number"}`), stem.EnqueueOptions{}))
	if res.State != stemtype.StateFailed || res.Attempt != 0 || !strings.Contains(res.Error.Message, "decode task arguments") {
		t.Fatalf("got %+v %+v", res, res.Error)
	}
}
