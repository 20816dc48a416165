package stem_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// A progress report racing the end of its task never lands after the
// final record. Each task's reporter goroutine passes Progress's check
// while the handler still runs and queues its write only once the task's
// outcome went to the result writer (test hooks hold it there), the
// widest form of the race; every task still ends succeeded, and Wait
// returns for each.
func TestProgressRacingReturnNeverReplacesFinalState(t *testing.T) {
	e := newEnv(t)
	const n = 2000
	var (
		mu      sync.Mutex
		checked = map[string]chan struct{}{} // closed once the reporter passed the check
		settled = map[string]chan struct{}{} // closed once the outcome was queued
	)
	ch := func(m map[string]chan struct{}, id string) chan struct{} {
		mu.Lock()
		defer mu.Unlock()
		c, ok := m[id]
		if !ok {
			c = make(chan struct{})
			m[id] = c
		}
		return c
	}
	restore := stem.SetTestHooks(
		func(id string) {
			close(ch(checked, id))
			<-ch(settled, id)
		},
		func(id string) { close(ch(settled, id)) })
	defer restore()
	var reporters sync.WaitGroup
	stem.Register(e.reg, "report-and-return", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		// A reporter goroutine of the task (a ticker, say) reports while
		// the handler returns.
		reporters.Go(func() { _ = tc.Progress(99, nil) })
		<-ch(checked, tc.TaskID())
		return "done", nil
	}, stem.TaskOptions{})
	reqs := make([]stem.EnqueueRequest, n)
	for i := range reqs {
		reqs[i] = stem.EnqueueRequest{Task: "report-and-return"}
	}
	ids, err := e.client.EnqueueBatch(context.Background(), reqs)
	if err != nil {
		t.Fatal(err)
	}
	_, stop := e.startWorker(stem.WorkerConfig{Concurrency: 8})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, id := range ids {
		if _, err := e.client.Wait(ctx, id); err != nil {
			t.Fatalf("Wait: %v", err)
		}
	}
	// Every report has been made; the worker flushes what it queued.
	reporters.Wait()
	stop()
	rs, err := e.results.GetMany(context.Background(), ids...)
	if err != nil {
		t.Fatal(err)
	}
	bad := 0
	for i, r := range rs {
		if r == nil || r.State != stemtype.StateSucceeded {
			if bad++; bad <= 3 {
				t.Errorf("task %s ended %+v", ids[i], r)
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d tasks did not stay succeeded", bad, n)
	}
}

// ackWatch reports the ids of the deliveries acknowledged through it.
type ackWatch struct {
	stemdriver.Broker
	acked chan string
}

func (b *ackWatch) Ack(ctx context.Context, ds ...stemdriver.Delivery) error {
	err := b.Broker.Ack(ctx, ds...)
	if err == nil {
		for _, d := range ds {
			if d.Envelope != nil {
				b.acked <- d.Envelope.ID
			}
		}
	}
	return err
}

// abandonLease claims the message of id as a consumer that then dies
// without acknowledging it: its short lease expires, and the next claim of
// the message (the worker's) is a redelivery. The message must be the
// first ready one of the default queue.
func abandonLease(t *testing.T, b stemdriver.Broker, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		ds, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"default"}, Consumer: "dead",
			Max: 1, Lease: 50 * time.Millisecond, Wait: 50 * time.Millisecond})
		if err != nil {
			t.Fatalf("claim as the dead consumer: %v", err)
		}
		if len(ds) == 0 {
			continue
		}
		if ds[0].Envelope == nil || ds[0].Envelope.ID != id {
			t.Fatalf("the dead consumer claimed %+v, want task %s", ds[0], id)
		}
		if ds[0].Redelivered {
			t.Fatalf("the first claim of %s is marked redelivered", id)
		}
		return
	}
}

// A redelivery of a task whose recorded state is already final (its
// worker recorded the outcome but died before acknowledging, so the lease
// expired) is acknowledged without running again, and its result stays as
// it was.
func TestDeliveryOfFinishedTaskIsAcknowledgedWithoutRunning(t *testing.T) {
	e := newEnv(t)
	ran := make(chan string, 1)
	stem.Register(e.reg, "once", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		ran <- tc.TaskID()
		return "again", nil
	}, stem.TaskOptions{})
	ctx := context.Background()
	id := stem.NewTaskID()
	at := time.Now().UTC().Truncate(time.Millisecond)
	if err := e.broker.Publish(ctx, &stemtype.Envelope{ID: id, Task: "once", Queue: "default", CreatedAt: at}); err != nil {
		t.Fatal(err)
	}
	abandonLease(t, e.broker, id)
	done := &stemtype.TaskResult{ID: id, Task: "once", Queue: "default", State: stemtype.StateSucceeded,
		Result: []byte(`"first"`), WorkerID: "dead", StartedAt: at, FinishedAt: at, UpdatedAt: at}
	if err := e.results.Put(ctx, done); err != nil {
		t.Fatal(err)
	}
	plain := e.broker
	watch := &ackWatch{Broker: e.broker, acked: make(chan string, 4)}
	e.broker = watch
	_, stop := e.startWorker(stem.WorkerConfig{})
	select {
	case got := <-ran:
		t.Fatalf("the finished task %s ran again", got)
	case got := <-watch.acked:
		if got != id {
			t.Fatalf("acknowledged %s, want %s", got, id)
		}
	}
	stop()
	if n, err := plain.Depth(ctx, "default"); err != nil || n != 0 {
		t.Fatalf("depth %d (%v) after the acknowledgement, want 0", n, err)
	}
	ds, err := plain.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"default"}, Consumer: "next",
		Max: 1, Lease: time.Second, Wait: 20 * time.Millisecond})
	if err != nil || len(ds) != 0 {
		t.Fatalf("the acknowledged message came back: %v %v", ds, err)
	}
	r, err := e.results.Get(ctx, id)
	if err != nil || r.State != stemtype.StateSucceeded || string(r.Result) != `"first"` || r.WorkerID != "dead" {
		t.Fatalf("the recorded result changed: %+v %v", r, err)
	}
}

// countReads counts the reads of the result backend it wraps.
type countReads struct {
	stemdriver.ResultBackend
	reads atomic.Int32
}

func (r *countReads) Get(ctx context.Context, id string) (*stemtype.TaskResult, error) {
	r.reads.Add(1)
	return r.ResultBackend.Get(ctx, id)
}

func (r *countReads) GetMany(ctx context.Context, ids ...string) ([]*stemtype.TaskResult, error) {
	r.reads.Add(1)
	return r.ResultBackend.GetMany(ctx, ids...)
}

// A first delivery costs the worker no result-backend read: only a
// redelivery can find its task already final. A duplicate publish of a
// finished task is a message of its own, first delivered, so it runs; its
// outcome does not replace the recorded final state.
func TestFirstDeliveryReadsNoResult(t *testing.T) {
	e := newEnv(t)
	ran := make(chan string, 100)
	stem.Register(e.reg, "job", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		ran <- tc.TaskID()
		return "again", nil
	}, stem.TaskOptions{})
	ctx := context.Background()
	at := time.Now().UTC().Truncate(time.Millisecond)
	dup := stem.NewTaskID()
	publishFinished(t, e, dup, "job", at)
	reqs := make([]stem.EnqueueRequest, 50)
	for i := range reqs {
		reqs[i] = stem.EnqueueRequest{Task: "job"}
	}
	ids, err := e.client.EnqueueBatch(ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	res := &countReads{ResultBackend: e.results}
	e.results = res
	_, stop := e.startWorker(stem.WorkerConfig{Concurrency: 4})
	for _, id := range ids {
		if r := e.wait(id); r.State != stemtype.StateSucceeded {
			t.Fatalf("task %s: %+v", id, r)
		}
	}
	if n := res.reads.Load(); n != 0 {
		t.Fatalf("the worker read the result backend %d times for first deliveries, want 0", n)
	}
	guard := time.After(30 * time.Second)
	for seen := map[string]bool{}; !seen[dup]; {
		select {
		case id := <-ran:
			seen[id] = true
		case <-guard:
			t.Fatalf("the duplicate publish of finished task %s never ran", dup)
		}
	}
	stop()
	if n := res.reads.Load(); n != 0 {
		t.Fatalf("the worker read the result backend %d times for first deliveries, want 0", n)
	}
	r, err := res.ResultBackend.Get(ctx, dup)
	if err != nil || r.State != stemtype.StateSucceeded || string(r.Result) != `"first"` {
		t.Fatalf("the duplicate's run replaced the recorded result: %+v %v", r, err)
	}
}

// noGetMany fails every GetMany: the worker cannot tell which claimed
// tasks finished before.
type noGetMany struct {
	stemdriver.ResultBackend
	calls atomic.Int32
}

func (r *noGetMany) GetMany(context.Context, ...string) ([]*stemtype.TaskResult, error) {
	r.calls.Add(1)
	return nil, errors.New("result backend unreachable")
}

// When the check of a redelivery for a final state fails, the task runs
// all the same (at-least-once), and the failure is counted against
// nothing.
func TestClaimedTasksRunWhenFinalCheckFails(t *testing.T) {
	e := newEnv(t)
	stem.Register(e.reg, "job", func(*stem.TaskContext, stem.Args) (any, error) { return "ok", nil }, stem.TaskOptions{})
	id := e.enqueue("job", nil, stem.EnqueueOptions{})
	abandonLease(t, e.broker, id)
	res := &noGetMany{ResultBackend: e.results}
	e.results = res
	e.startWorker(stem.WorkerConfig{})
	if r := e.wait(id); r.State != stemtype.StateSucceeded || string(r.Result) != `"ok"` {
		t.Fatalf("got %+v", r)
	}
	if res.calls.Load() == 0 {
		t.Fatal("the worker never checked the redelivery against the result backend")
	}
}

// publishFinished records task id succeeded with result "first", then
// publishes a message of it on the default queue, as a duplicate publish
// (or, once its lease is abandoned, a redelivery) of a finished task.
func publishFinished(t *testing.T, e *env, id, task string, at time.Time) {
	t.Helper()
	ctx := context.Background()
	if err := e.results.Put(ctx, &stemtype.TaskResult{ID: id, Task: task, Queue: "default", State: stemtype.StateSucceeded,
		Result: []byte(`"first"`), FinishedAt: at, UpdatedAt: at}); err != nil {
		t.Fatal(err)
	}
	if err := e.broker.Publish(ctx, &stemtype.Envelope{ID: id, Task: task, Queue: "default", CreatedAt: at}); err != nil {
		t.Fatal(err)
	}
}
