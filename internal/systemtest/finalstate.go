package systemtest

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

// Final states are final: a redelivery, a duplicate publish or a slow
// result backend never replaces a task's recorded outcome.

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
func (d *deployment) abandonLease(h Harness, id string) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	for {
		ds, err := d.roles.Broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{stemtype.DefaultQueue}, Consumer: "dead",
			Max: 1, Lease: h.Capabilities.ShortLease, Wait: 50 * time.Millisecond})
		if err != nil {
			d.t.Fatalf("claim as the dead consumer: %v", err)
		}
		if len(ds) == 0 {
			continue
		}
		if ds[0].Envelope == nil || ds[0].Envelope.ID != id {
			d.t.Fatalf("the dead consumer claimed %+v, want task %s", ds[0], id)
		}
		if ds[0].Redelivered {
			d.t.Fatalf("the first claim of %s is marked redelivered", id)
		}
		return
	}
}

// publishFinished records task id succeeded with result "first", then
// publishes a message of it on the default queue, as a duplicate publish
// (or, once its lease is abandoned, a redelivery) of a finished task.
func (d *deployment) publishFinished(id, task string, at time.Time) {
	d.t.Helper()
	ctx := context.Background()
	if err := d.roles.Results.Put(ctx, &stemtype.TaskResult{ID: id, Task: task, Queue: stemtype.DefaultQueue,
		State: stemtype.StateSucceeded, Result: []byte(`"first"`), FinishedAt: at, UpdatedAt: at}); err != nil {
		d.t.Fatal(err)
	}
	if err := d.roles.Broker.Publish(ctx, &stemtype.Envelope{ID: id, Task: task, Queue: stemtype.DefaultQueue,
		CreatedAt: at}); err != nil {
		d.t.Fatal(err)
	}
}

// A redelivery of a task whose recorded state is already final (its
// worker recorded the outcome but died before acknowledging, so the lease
// expired) is acknowledged without running again, and its result stays as
// it was.
func testDeliveryOfFinishedTaskIsAcknowledgedWithoutRunning(t *testing.T, h Harness) {
	d := open(t, h)
	ran := make(chan string, 1)
	stem.Register(d.reg, "once", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		ran <- tc.TaskID()
		return "again", nil
	}, stem.TaskOptions{})
	ctx := context.Background()
	id := stem.NewTaskID()
	at := time.Now().UTC().Truncate(time.Millisecond)
	if err := d.roles.Broker.Publish(ctx, &stemtype.Envelope{ID: id, Task: "once", Queue: stemtype.DefaultQueue,
		CreatedAt: at}); err != nil {
		t.Fatal(err)
	}
	d.abandonLease(h, id)
	done := &stemtype.TaskResult{ID: id, Task: "once", Queue: stemtype.DefaultQueue, State: stemtype.StateSucceeded,
		Result: []byte(`"first"`), WorkerID: "dead", StartedAt: at, FinishedAt: at, UpdatedAt: at}
	if err := d.roles.Results.Put(ctx, done); err != nil {
		t.Fatal(err)
	}
	watch := &ackWatch{Broker: d.roles.Broker, acked: make(chan string, 4)}
	_, stop := d.startWorker(stem.WorkerConfig{Broker: watch})
	select {
	case got := <-ran:
		t.Fatalf("the finished task %s ran again", got)
	case got := <-watch.acked:
		if got != id {
			t.Fatalf("acknowledged %s, want %s", got, id)
		}
	}
	stop()
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("depth %d after the acknowledgement, want 0", n)
	}
	ds, err := d.roles.Broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{stemtype.DefaultQueue}, Consumer: "next",
		Max: 1, Lease: time.Second, Wait: 20 * time.Millisecond})
	if err != nil || len(ds) != 0 {
		t.Fatalf("the acknowledged message came back: %v %v", ds, err)
	}
	r, err := d.roles.Results.Get(ctx, id)
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
func testFirstDeliveryReadsNoResult(t *testing.T, h Harness) {
	d := open(t, h)
	ran := make(chan string, 100)
	stem.Register(d.reg, "job", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		ran <- tc.TaskID()
		return "again", nil
	}, stem.TaskOptions{})
	ctx := context.Background()
	dup := stem.NewTaskID()
	d.publishFinished(dup, "job", time.Now().UTC().Truncate(time.Millisecond))
	reqs := make([]stem.EnqueueRequest, 50)
	for i := range reqs {
		reqs[i] = stem.EnqueueRequest{Task: "job"}
	}
	ids, err := d.client.EnqueueBatch(ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	res := &countReads{ResultBackend: d.roles.Results}
	_, stop := d.startWorker(stem.WorkerConfig{Results: res, Concurrency: 4})
	for _, id := range ids {
		if r := d.wait(id); r.State != stemtype.StateSucceeded {
			t.Fatalf("task %s: %+v", id, r)
		}
	}
	if n := res.reads.Load(); n != 0 {
		t.Fatalf("the worker read the result backend %d times for first deliveries, want 0", n)
	}
	guard := time.After(waitBound)
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
	r, err := d.roles.Results.Get(ctx, dup)
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
// all the same (at-least-once).
func testClaimedTasksRunWhenFinalCheckFails(t *testing.T, h Harness) {
	d := open(t, h)
	stem.Register(d.reg, "job", func(*stem.TaskContext, stem.Args) (any, error) { return "ok", nil }, stem.TaskOptions{})
	id := d.enqueue("job", stem.EnqueueOptions{})
	d.abandonLease(h, id)
	res := &noGetMany{ResultBackend: d.roles.Results}
	d.startWorker(stem.WorkerConfig{Results: res})
	if r := d.wait(id); r.State != stemtype.StateSucceeded || string(r.Result) != `"ok"` {
		t.Fatalf("got %+v", r)
	}
	if res.calls.Load() == 0 {
		t.Fatal("the worker never checked the redelivery against the result backend")
	}
}

// finalsOnly is a result backend that implements stemdriver.FinalGetter
// (by filtering GetMany of the backend it wraps) and refuses GetMany, so a
// worker that checks its claims with GetMany cannot tell which finished.
type finalsOnly struct {
	stemdriver.ResultBackend
	calls atomic.Int32
}

func (r *finalsOnly) GetMany(context.Context, ...string) ([]*stemtype.TaskResult, error) {
	return nil, errors.New("GetMany called on a backend with GetFinalMany")
}

func (r *finalsOnly) GetFinalMany(ctx context.Context, ids ...string) ([]*stemtype.TaskResult, error) {
	r.calls.Add(1)
	rs, err := r.ResultBackend.GetMany(ctx, ids...)
	for i, res := range rs {
		if res != nil && !res.State.Final() {
			rs[i] = nil
		}
	}
	return rs, err
}

// A worker whose result backend implements stemdriver.FinalGetter checks
// its redeliveries with GetFinalMany: a redelivered finished task is
// acknowledged without running, another one runs.
func testClaimCheckUsesFinalGetter(t *testing.T, h Harness) {
	d := open(t, h)
	ran := make(chan string, 2)
	stem.Register(d.reg, "once", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		ran <- tc.TaskID()
		return "ran", nil
	}, stem.TaskOptions{})
	finished := stem.NewTaskID()
	d.publishFinished(finished, "once", time.Now().UTC().Truncate(time.Millisecond))
	d.abandonLease(h, finished) // the worker's claim is a redelivery
	fresh := d.enqueue("once", stem.EnqueueOptions{})
	res := &finalsOnly{ResultBackend: d.roles.Results}
	watch := &ackWatch{Broker: d.roles.Broker, acked: make(chan string, 4)}
	_, stop := d.startWorker(stem.WorkerConfig{Broker: watch, Results: res})
	acked := map[string]bool{}
	for !acked[finished] || !acked[fresh] {
		acked[<-watch.acked] = true
	}
	stop()
	if r := d.wait(fresh); r.State != stemtype.StateSucceeded || string(r.Result) != `"ran"` {
		t.Fatalf("the fresh task: %+v", r)
	}
	if got := <-ran; got != fresh {
		t.Fatalf("task %s ran, want %s", got, fresh)
	}
	noneOf(t, ran, "the finished task ran too")
	if r := d.wait(finished); string(r.Result) != `"first"` {
		t.Fatalf("the finished task's result changed: %+v", r)
	}
	if res.calls.Load() == 0 {
		t.Fatal("the worker never called GetFinalMany")
	}
}

// gatedResults holds the first Put until gate is closed and says, on
// entered, when it holds it: the result writer is busy with one batch
// while the next one fills up.
type gatedResults struct {
	stemdriver.ResultBackend
	once    sync.Once
	entered chan struct{}
	gate    chan struct{}
}

func newGatedResults(r stemdriver.ResultBackend) *gatedResults {
	return &gatedResults{ResultBackend: r, entered: make(chan struct{}), gate: make(chan struct{})}
}

func (r *gatedResults) Put(ctx context.Context, rs ...*stemtype.TaskResult) error {
	first := false
	r.once.Do(func() { first = true })
	if first {
		close(r.entered)
		select {
		case <-r.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return r.ResultBackend.Put(ctx, rs...)
}

// Two copies of one task on one worker (a duplicate publish, as a retried
// EnqueueBatch makes, or a redelivery): the first copy's outcome is final
// and the second copy's started record, queued right after it, reaches
// the result writer in the same batch. The first final state stays: the
// writer never lets a later write of the batch replace a final one (it
// would not reach the backend, whose final-state rule could not keep it,
// and the first copy would be acknowledged with no outcome recorded).
func testDuplicateCopyInSameBatchNeverReplacesFinalState(t *testing.T, h Harness) {
	d := open(t, h)
	res := newGatedResults(d.roles.Results)
	secondRuns := make(chan struct{})
	var runs atomic.Int32
	stem.Register(d.reg, "twice", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		if runs.Add(1) == 1 {
			// The writer holds the batch of this copy's started record.
			<-res.entered
			return "first", nil
		}
		close(secondRuns)
		return nil, stem.NoRetry(errors.New("second copy: already done"))
	}, stem.TaskOptions{})
	id := d.enqueue("twice", stem.EnqueueOptions{})
	env := &stemtype.Envelope{ID: id, Task: "twice", Queue: stemtype.DefaultQueue, CreatedAt: time.Now().UTC()}
	if err := d.roles.Broker.Publish(context.Background(), env); err != nil { // the duplicate
		t.Fatal(err)
	}
	_, stop := d.startWorker(stem.WorkerConfig{Results: res, Concurrency: 1})
	openGate := sync.OnceFunc(func() { close(res.gate) })
	t.Cleanup(openGate) // before the worker stops, should the case fail
	await(t, secondRuns, "the second copy runs")
	// The first copy's outcome and the second copy's started record are
	// both queued behind the held batch now.
	openGate()
	r := d.wait(id)
	stop()
	if r.State != stemtype.StateSucceeded || string(r.Result) != `"first"` {
		t.Fatalf("the first copy's final state was replaced: %s %s %+v", r.State, r.Result, r.Error)
	}
}

// A task revoked without terminate while it runs finishes and is recorded
// succeeded (DESIGN §2.5), even when the result backend is slow and has
// not recorded the task's start yet when the controller looks: the
// controller must not mark a task a worker holds as cancelled, since a
// final state is final and the worker's outcome could then never be
// recorded.
func testRevokeOfTaskWhoseStartIsNotRecordedYetKeepsItsOutcome(t *testing.T, h Harness) {
	d := open(t, h)
	running, finish := steadyTask(d)
	id := d.enqueue("steady", stem.EnqueueOptions{})
	slow := newGatedResults(d.roles.Results) // the worker's: its first write (started) is held
	d.startWorker(stem.WorkerConfig{Results: slow})
	release := sync.OnceFunc(func() { close(finish); close(slow.gate) })
	t.Cleanup(release) // before the worker stops, should the case fail
	await(t, running, "the task runs")
	await(t, slow.entered, "the worker writes the started state")
	res, err := d.ctl.Revoke(context.Background(), target(), stem.RevokeOptions{TaskIDs: []string{id}})
	if err != nil {
		t.Fatal(err)
	}
	if res.MarkErr != nil {
		t.Fatal(res.MarkErr)
	}
	release()
	if r := d.wait(id); r.State != stemtype.StateSucceeded || string(r.Result) != `"finished"` {
		t.Fatalf("the running task revoked without terminate ended %s %s %+v, want succeeded", r.State, r.Result, r.Error)
	}
}

// The same race with a revoke addressed to another worker than the one
// running the task: that worker does not answer for the task, so the
// controller cannot know it is held, and marks nothing.
func testTargetedRevokeNeverMarksTaskOfAnotherWorker(t *testing.T, h Harness) {
	d := open(t, h)
	running, finish := steadyTask(d)
	d.startWorker(stem.WorkerConfig{ID: "idle", Queues: []string{"elsewhere"}})
	slow := newGatedResults(d.roles.Results)
	d.startWorker(stem.WorkerConfig{ID: "busy", Results: slow})
	release := sync.OnceFunc(func() { close(finish); close(slow.gate) })
	t.Cleanup(release) // before the workers stop, should the case fail
	id := d.enqueue("steady", stem.EnqueueOptions{})
	await(t, running, "the task runs")
	await(t, slow.entered, "the worker writes the started state")
	res, err := d.ctl.Revoke(context.Background(), target("idle"), stem.RevokeOptions{TaskIDs: []string{id}})
	if err != nil {
		t.Fatal(err)
	}
	if res.MarkErr != nil {
		t.Fatal(res.MarkErr)
	}
	release()
	if r := d.wait(id); r.State != stemtype.StateSucceeded {
		t.Fatalf("the task running on another worker ended %s %+v, want succeeded", r.State, r.Error)
	}
}

// steadyTask registers "steady", a task that closes running once it runs,
// then returns "finished" once finish is closed (it ignores revokes
// without terminate, as a task between checkpoints does).
func steadyTask(d *deployment) (running, finish chan struct{}) {
	running, finish = make(chan struct{}), make(chan struct{})
	stem.Register(d.reg, "steady", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		close(running)
		<-finish
		return "finished", nil
	}, stem.TaskOptions{})
	return running, finish
}
