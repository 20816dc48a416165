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
	e.reg.MustAdd(stem.Task{Name: "report-and-return", Run: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		// A reporter goroutine of the task (a ticker, say) reports while
		// the handler returns.
		reporters.Go(func() { _ = tc.Progress(99, nil) })
		<-ch(checked, tc.TaskID())
		return "done", nil
	}})
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

// A delivery of a task whose recorded state is already final (a
// redelivery after the ack was lost, a duplicate publish) is acknowledged
// without running again, and its result stays as it was.
func TestDeliveryOfFinishedTaskIsAcknowledgedWithoutRunning(t *testing.T) {
	e := newEnv(t)
	ran := make(chan string, 1)
	e.reg.MustAdd(stem.Task{Name: "once", Run: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		ran <- tc.TaskID()
		return "again", nil
	}})
	ctx := context.Background()
	id := stem.NewTaskID()
	at := time.Now().UTC().Truncate(time.Millisecond)
	done := &stemtype.TaskResult{ID: id, Task: "once", Queue: "default", State: stemtype.StateSucceeded,
		Result: []byte(`"first"`), WorkerID: "earlier", StartedAt: at, FinishedAt: at, UpdatedAt: at}
	if err := e.results.Put(ctx, done); err != nil {
		t.Fatal(err)
	}
	if err := e.broker.Publish(ctx, &stemtype.Envelope{ID: id, Task: "once", Queue: "default", CreatedAt: at}); err != nil {
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
	if err != nil || r.State != stemtype.StateSucceeded || string(r.Result) != `"first"` || r.WorkerID != "earlier" {
		t.Fatalf("the recorded result changed: %+v %v", r, err)
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

// When the check for finished tasks fails, the claimed tasks run all the
// same (at-least-once), and the failure is counted against nothing.
func TestClaimedTasksRunWhenFinalCheckFails(t *testing.T) {
	e := newEnv(t)
	e.reg.MustAdd(stem.Task{Name: "job", Run: func(*stem.TaskContext, stem.Args) (any, error) { return "ok", nil }})
	id := e.enqueue("job", nil, stem.EnqueueOptions{})
	res := &noGetMany{ResultBackend: e.results}
	e.results = res
	e.startWorker(stem.WorkerConfig{})
	if r := e.wait(id); r.State != stemtype.StateSucceeded || string(r.Result) != `"ok"` {
		t.Fatalf("got %+v", r)
	}
	if res.calls.Load() == 0 {
		t.Fatal("the worker never checked its claims against the result backend")
	}
}
