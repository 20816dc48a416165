package systemtest

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// A task enqueued by the client runs on a worker, and Wait returns its
// result with the worker that ran it.
func testEnqueueAndResult(t *testing.T, h Harness) {
	d := open(t, h)
	type addArgs struct{ A, B int }
	stem.Register(d.reg, "add", func(tc *stem.TaskContext, a addArgs) (any, error) {
		if tc.TaskID() == "" || tc.Attempt() != 0 {
			return nil, errors.New("bad task context")
		}
		return a.A + a.B, nil
	}, stem.TaskOptions{})
	d.startWorker(stem.WorkerConfig{ID: "w1"})
	id, err := d.client.Enqueue(context.Background(), "add", addArgs{2, 3}, stem.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res := d.wait(id)
	if res.State != stemtype.StateSucceeded || string(res.Result) != "5" || res.Error != nil || res.WorkerID != "w1" {
		t.Fatalf("got %+v", res)
	}
}

// A task that fails twice is retried and succeeds on its third attempt,
// which the result counts.
func testRetryThenSucceed(t *testing.T, h Harness) {
	d := open(t, h)
	attempts := make(chan int, 8)
	stem.Register(d.reg, "flaky", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		attempts <- tc.Attempt()
		if tc.Attempt() < 2 {
			return nil, errors.New("not yet")
		}
		return "ok", nil
	}, stem.TaskOptions{MaxRetries: 5,
		RetryPolicy: stem.ExponentialBackoff{Base: time.Millisecond, Max: 10 * time.Millisecond}})
	_, stop := d.startWorker(stem.WorkerConfig{})
	res := d.wait(d.enqueue("flaky", stem.EnqueueOptions{}))
	stop()
	close(attempts)
	var got []int
	for a := range attempts {
		got = append(got, a)
	}
	if res.State != stemtype.StateSucceeded || string(res.Result) != `"ok"` || res.Attempt != 2 {
		t.Fatalf("got %+v", res)
	}
	if !slices.Equal(got, []int{0, 1, 2}) {
		t.Fatalf("attempts %v, want [0 1 2]", got)
	}
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("queue depth %d after success, want 0", n)
	}
}

// A task that always fails is retried MaxRetries times, each attempt
// numbered, then recorded failed with its error on its last attempt; no
// copy of it is left in the queue.
func testRetryToFinalFailure(t *testing.T, h Harness) {
	d := open(t, h)
	var runs atomic.Int32
	attempts := make(chan int, 10)
	stem.Register(d.reg, "always-fails", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		runs.Add(1)
		attempts <- tc.Attempt()
		return nil, errors.New("boom")
	}, stem.TaskOptions{MaxRetries: 3,
		RetryPolicy: stem.ExponentialBackoff{Base: 10 * time.Millisecond, Max: 40 * time.Millisecond}})
	_, stop := d.startWorker(stem.WorkerConfig{})
	res := d.wait(d.enqueue("always-fails", stem.EnqueueOptions{}))
	stop() // every run has returned once Run returned
	close(attempts)
	var got []int
	for a := range attempts {
		got = append(got, a)
	}
	if res.State != stemtype.StateFailed || res.Error == nil || res.Error.Message != "boom" || res.Attempt != 3 {
		t.Fatalf("final result %+v (error %+v), want failed with boom on attempt 3", res, res.Error)
	}
	if n := runs.Load(); n != 4 {
		t.Fatalf("ran %d times, want 4 (1 + 3 retries)", n)
	}
	if !slices.Equal(got, []int{0, 1, 2, 3}) {
		t.Fatalf("attempts %v, want [0 1 2 3]", got)
	}
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("queue depth %d after the final failure, want 0", n)
	}
}

// A task that fails with stem.NoRetry fails at once, on its first attempt,
// whatever its MaxRetries.
func testNoRetryFailsAtOnce(t *testing.T, h Harness) {
	d := open(t, h)
	var runs atomic.Int32
	stem.Register(d.reg, "permanent", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		runs.Add(1)
		return nil, stem.NoRetry(errors.New("bad input"))
	}, stem.TaskOptions{MaxRetries: 5})
	_, stop := d.startWorker(stem.WorkerConfig{})
	res := d.wait(d.enqueue("permanent", stem.EnqueueOptions{}))
	stop()
	if res.State != stemtype.StateFailed || res.Attempt != 0 || runs.Load() != 1 {
		t.Fatalf("permanent: %+v after %d runs, want failed on attempt 0 after 1 run", res, runs.Load())
	}
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("queue depth %d after a no-retry failure, want 0", n)
	}
}

// A handler that panics is recorded as a failure of kind "panic" with the
// panic's message, and the worker survives to run the next task.
func testPanicIsRecordedFailure(t *testing.T, h Harness) {
	d := open(t, h)
	stem.Register(d.reg, "panics", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		var m map[string]int
		m["x"] = 1 // nil map write
		return nil, nil
	}, stem.TaskOptions{})
	stem.Register(d.reg, "echo", func(tc *stem.TaskContext, a stem.Args) (any, error) {
		return json.RawMessage(a), nil
	}, stem.TaskOptions{})
	d.startWorker(stem.WorkerConfig{Concurrency: 1})
	res := d.wait(d.enqueue("panics", stem.EnqueueOptions{}))
	if res.State != stemtype.StateFailed || res.Error == nil || res.Error.Kind != "panic" ||
		!strings.Contains(res.Error.Message, "assignment to entry in nil map") {
		t.Fatalf("got %+v error %+v", res, res.Error)
	}
	// The worker survived and still runs tasks.
	if res := d.wait(d.enqueueWith("echo", map[string]int{"n": 1}, stem.EnqueueOptions{})); res.State != stemtype.StateSucceeded ||
		string(res.Result) != `{"n":1}` {
		t.Fatalf("after panic: %+v", res)
	}
}

// A task no worker knows is retried (WorkerConfig.UnknownTaskRetries,
// apart from its own attempts: its Attempt stays 0), then recorded as a
// failure of kind "unknown_task" naming it, and leaves the queue. With a
// negative UnknownTaskRetries it fails at once.
func testUnknownTaskIsRecordedFailure(t *testing.T, h Harness) {
	d := open(t, h)
	stem.Register(d.reg, "known", func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }, stem.TaskOptions{})
	d.startWorker(stem.WorkerConfig{ID: "w1", UnknownTaskRetries: 2,
		UnknownTaskBackoff: stem.ExponentialBackoff{Base: time.Millisecond, Max: time.Millisecond}})
	res := d.wait(d.enqueue("no.such.task", stem.EnqueueOptions{MaxRetries: new(5)}))
	if res.State != stemtype.StateFailed || res.Error == nil || res.Error.Kind != "unknown_task" ||
		!strings.Contains(res.Error.Message, `"no.such.task"`) || !strings.Contains(res.Error.Message, "after 2 retries") ||
		res.Attempt != 0 {
		t.Fatalf("got %+v error %+v", res, res.Error)
	}
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("unknown task left in queue: depth %d", n)
	}
	r, err := d.ctl.Stats(context.Background(), target("w1"))
	if err != nil || len(r.Replies) != 1 {
		t.Fatalf("%+v %v", r, err)
	}
	var s stemtype.StatsReply
	if err := json.Unmarshal(r.Replies[0].Payload, &s); err != nil {
		t.Fatal(err)
	}
	if s.Retried != 2 || s.Failed != 1 {
		t.Fatalf("stats: %d retried, %d failed; want 2 and 1", s.Retried, s.Failed)
	}

	d2 := open(t, h)
	d2.startWorker(stem.WorkerConfig{UnknownTaskRetries: -1})
	res = d2.wait(d2.enqueue("no.such.task", stem.EnqueueOptions{}))
	if res.State != stemtype.StateFailed || res.Error == nil || res.Error.Kind != "unknown_task" ||
		!strings.Contains(res.Error.Message, `"no.such.task"`) || strings.Contains(res.Error.Message, "retries") {
		t.Fatalf("UnknownTaskRetries -1: got %+v error %+v, want failed at once, naming the task and no retries", res, res.Error)
	}
}

// The rolling deploy: a worker of the old version, without the task's
// handler, retries it (recording state retry, kind "unknown_task") rather
// than failing it; once that worker is replaced by one of the new
// version, the task runs, once, with its own retries intact (attempt 0).
func testUnknownTaskRunsAfterRollingDeploy(t *testing.T, h Harness) {
	d := open(t, h)
	old := Registry()
	_, stopOld := d.startWorkerWith(old, stem.WorkerConfig{UnknownTaskRetries: 1000,
		UnknownTaskBackoff: stem.ExponentialBackoff{Base: 5 * time.Millisecond, Max: 5 * time.Millisecond}})
	id := d.enqueue("deploy.new", stem.EnqueueOptions{})
	retries := 0
	d.waitFor("the old worker retries the task it has no handler for", func(ctx context.Context) bool {
		res, err := d.roles.Results.Get(ctx, id)
		if err == nil && res.State == stemtype.StateRetry && res.Error != nil && res.Error.Kind == "unknown_task" &&
			strings.Contains(res.Error.Message, `"deploy.new"`) {
			retries++
		}
		return retries >= 2
	})
	stopOld()
	if res, err := d.roles.Results.Get(context.Background(), id); err != nil || res.State.Final() {
		t.Fatalf("before the deploy: %+v %v; want the task waiting for a retry", res, err)
	}

	var ran atomic.Int32
	stem.Register(d.reg, "deploy.new", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		ran.Add(1)
		return tc.Attempt(), nil
	}, stem.TaskOptions{})
	d.startWorker(stem.WorkerConfig{})
	res := d.wait(id)
	if res.State != stemtype.StateSucceeded || string(res.Result) != "0" || ran.Load() != 1 {
		t.Fatalf("after the deploy: %+v, ran %d times; want succeeded once at attempt 0", res, ran.Load())
	}
}

// Arguments that do not decode into the task's argument type fail the
// task at once, without a retry, saying so.
func testArgumentsThatDoNotDecodeFailWithoutRetry(t *testing.T, h Harness) {
	d := open(t, h)
	type args struct{ N int }
	stem.Register(d.reg, "typed", func(tc *stem.TaskContext, a args) (any, error) { return a.N, nil },
		stem.TaskOptions{MaxRetries: 3})
	d.startWorker(stem.WorkerConfig{})
	res := d.wait(d.enqueueWith("typed", json.RawMessage(`{"N":"not a number"}`), stem.EnqueueOptions{}))
	if res.State != stemtype.StateFailed || res.Attempt != 0 || res.Error == nil ||
		!strings.Contains(res.Error.Message, "decode task arguments") {
		t.Fatalf("got %+v %+v", res, res.Error)
	}
}

// A task enqueued with a countdown does not run before it is over.
func testCountdownDelaysTask(t *testing.T, h Harness) {
	d := open(t, h)
	stem.Register(d.reg, "when", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		return time.Now().UnixNano(), nil
	}, stem.TaskOptions{})
	d.startWorker(stem.WorkerConfig{})
	before := time.Now()
	res := d.wait(d.enqueue("when", stem.EnqueueOptions{Countdown: 150 * time.Millisecond}))
	var ranAt int64
	if err := json.Unmarshal(res.Result, &ranAt); res.State != stemtype.StateSucceeded || err != nil {
		t.Fatalf("got %+v (%v)", res, err)
	}
	if ran := time.Unix(0, ranAt); ran.Before(before.Add(150 * time.Millisecond)) {
		t.Fatalf("task ran %s after enqueue, before its countdown", ran.Sub(before))
	}
}

// A task over its time limit sees its context cancelled with cause
// stem.ErrTimeLimit, and the attempt fails with kind "time_limit".
func testTimeLimitFailsAttempt(t *testing.T, h Harness) {
	d := open(t, h)
	stem.Register(d.reg, "slow", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		<-tc.Done()
		if !errors.Is(context.Cause(tc), stem.ErrTimeLimit) {
			return nil, errors.New("cause is not ErrTimeLimit")
		}
		return nil, tc.Err()
	}, stem.TaskOptions{TimeLimit: 50 * time.Millisecond})
	d.startWorker(stem.WorkerConfig{})
	res := d.wait(d.enqueue("slow", stem.EnqueueOptions{}))
	if res.State != stemtype.StateFailed || res.Error == nil || res.Error.Kind != "time_limit" {
		t.Fatalf("got %+v error %+v", res, res.Error)
	}
}

// A progress percentage that is not a number (0/0, as a handler that
// divides by an empty total reports) is refused like one out of range:
// accepted, it made every later write of its writer shard unencodable,
// so neither the task's outcome nor any other task's of that shard was
// ever recorded or acknowledged.
func testProgressNaNIsRefusedAndTheTaskEnds(t *testing.T, h Harness) {
	d := open(t, h)
	refused := make(chan error, 1)
	stem.Register(d.reg, "empty-batch", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		done, total := 0.0, 0.0
		refused <- tc.Progress(done/total*100, nil)
		return "ok", nil
	}, stem.TaskOptions{})
	d.startWorker(stem.WorkerConfig{})
	id := d.enqueue("empty-batch", stem.EnqueueOptions{})
	if err := await(t, refused, "the task reports its progress"); err == nil {
		t.Error("Progress(NaN) returned no error")
	}
	r := d.wait(id) // its deadline is the failure detector: the outcome takes milliseconds
	if r.State != stemtype.StateSucceeded || (r.Progress != nil && math.IsNaN(r.Progress.Percent)) {
		t.Fatalf("got %+v", r)
	}
}

// Raw JSON is encoded by one rule for arguments and for inline results:
// empty stem.Args are no arguments rather than an error, and a task's
// empty stem.Args or json.RawMessage result is no result (an empty
// stem.Args was the JSON null), as isolated tasks store them.
func testRawJSONArgsAndResults(t *testing.T, h Harness) {
	d := open(t, h)
	stem.Register(d.reg, "raw", func(tc *stem.TaskContext, a stem.Args) (any, error) {
		var in struct{ Out string }
		if err := a.Decode(&in); err != nil {
			return nil, err
		}
		switch in.Out {
		case "args":
			return stem.Args(`{ "a" : 1 }`), nil
		case "empty_args":
			return stem.Args(nil), nil
		case "empty_raw":
			return json.RawMessage{}, nil
		}
		return "none", nil
	}, stem.TaskOptions{})
	d.startWorker(stem.WorkerConfig{})
	// Enqueueing empty Args failed with "arguments are not valid JSON".
	if r := d.wait(d.enqueueWith("raw", stem.Args(nil), stem.EnqueueOptions{})); r.State != stemtype.StateSucceeded ||
		string(r.Result) != `"none"` {
		t.Fatalf("empty args: state %s result %s error %+v", r.State, r.Result, r.Error)
	}
	for _, c := range []struct{ out, want string }{
		{"args", `{"a":1}`}, // stored results are compacted JSON
		{"empty_args", ``},  // was the JSON null
		{"empty_raw", ``},
	} {
		r := d.wait(d.enqueueWith("raw", map[string]string{"Out": c.out}, stem.EnqueueOptions{}))
		if r.State != stemtype.StateSucceeded || string(r.Result) != c.want {
			t.Errorf("%s: state %s result %q error %+v; want succeeded with %q", c.out, r.State, r.Result, r.Error, c.want)
		}
	}
}
