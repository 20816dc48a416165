package systemtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// Fault-injecting wrappers around the backend's real drivers: each case
// changes one behaviour of one driver (an outage, a lost lease, a hung
// call) and checks that the worker stays correct over the rest of the
// backend.

// waitNotRunning waits until every live worker of the deployment holds no
// task (stats inflight 0), asking through the control plane.
func (d *deployment) waitNotRunning() {
	d.t.Helper()
	d.waitFor("the workers hold no task", func(ctx context.Context) bool {
		r, err := d.ctl.Stats(ctx, stem.Target{Timeout: time.Second})
		if err != nil || len(r.Replies) == 0 {
			return false
		}
		for _, rep := range r.Replies {
			var st stemtype.StatsReply
			if json.Unmarshal(rep.Payload, &st) != nil || st.Inflight != 0 {
				return false
			}
		}
		return true
	})
}

// downResults fails every Put while down is set: a result backend outage.
type downResults struct {
	stemdriver.ResultBackend
	down atomic.Bool
}

func (f *downResults) Put(ctx context.Context, rs ...*stemtype.TaskResult) error {
	if f.down.Load() {
		return errors.New("result backend unreachable")
	}
	return f.ResultBackend.Put(ctx, rs...)
}

// A task whose result cannot be written is never acknowledged: when the
// worker stops, the delivery is left to its lease and comes back.
func testOutcomeThatCannotBeRecordedIsNotAcknowledged(t *testing.T, h Harness) {
	d := open(t, h)
	ran := make(chan struct{}, 1)
	stem.Register(d.reg, "job", func(*stem.TaskContext, stem.Args) (any, error) {
		ran <- struct{}{}
		return "ok", nil
	}, stem.TaskOptions{})
	id := d.enqueue("job", stem.EnqueueOptions{})
	res := &downResults{ResultBackend: d.roles.Results}
	res.down.Store(true)
	_, stop := d.startWorker(stem.WorkerConfig{Results: res, Lease: 2 * h.Capabilities.ShortLease,
		ShutdownTimeout: 100 * time.Millisecond})
	await(t, ran, "the task runs")
	stop()
	ds, err := d.roles.Broker.Claim(context.Background(), stemdriver.ClaimRequest{Queues: []string{stemtype.DefaultQueue},
		Consumer: "next", Max: 1, Lease: time.Second, Wait: waitBound})
	if err != nil || len(ds) != 1 || ds[0].Envelope == nil || ds[0].Envelope.ID != id {
		t.Fatalf("the task whose outcome was not recorded did not come back: %v %v", ds, err)
	}
}

// lossyBroker plays another worker that took task lostID over: when this
// worker first extends that task's lease, the other one has already run it
// to succeeded and acknowledged it, and the extension reports
// ErrLeaseLost.
type lossyBroker struct {
	stemdriver.Broker
	results  stemdriver.ResultBackend
	lostID   string
	reported atomic.Bool
}

func (b *lossyBroker) ExtendLease(ctx context.Context, d stemdriver.Delivery, l time.Duration) error {
	if d.Envelope != nil && d.Envelope.ID == b.lostID {
		if !b.reported.Swap(true) {
			now := time.Now().UTC()
			if err := b.results.Put(ctx, &stemtype.TaskResult{ID: d.Envelope.ID, Task: d.Envelope.Task,
				State: stemtype.StateSucceeded, WorkerID: "other", FinishedAt: now, UpdatedAt: now}); err != nil {
				return err
			}
			if err := b.Broker.Ack(ctx, d); err != nil {
				return err
			}
		}
		return stemdriver.ErrLeaseLost
	}
	return b.Broker.ExtendLease(ctx, d, l)
}

// A claimed task whose lease is lost while it waits in prefetch is not
// started: another worker owns it, and its outcome stays.
func testTaskLostInPrefetchIsNotStarted(t *testing.T, h Harness) {
	d := open(t, h)
	release := make(chan struct{})
	var quickRuns atomic.Int32
	stem.Register(d.reg, "slow", func(*stem.TaskContext, stem.Args) (any, error) {
		<-release
		return nil, nil
	}, stem.TaskOptions{})
	stem.Register(d.reg, "quick", func(*stem.TaskContext, stem.Args) (any, error) {
		quickRuns.Add(1)
		return nil, nil
	}, stem.TaskOptions{})
	slowID := d.enqueue("slow", stem.EnqueueOptions{})
	quickID := d.enqueue("quick", stem.EnqueueOptions{})
	b := &lossyBroker{Broker: d.roles.Broker, results: d.roles.Results, lostID: quickID}
	// The worker logs the loss once it has recorded it (renewals run
	// concurrently, so another task's renewal says nothing of it).
	lost := make(chan struct{})
	lostOnce := sync.OnceFunc(func() { close(lost) })
	log := slog.New(onMessage(func(msg string) {
		if msg == "lease lost: another worker may run this task" {
			lostOnce()
		}
	}))
	d.startWorker(stem.WorkerConfig{Broker: b, Concurrency: 1, Prefetch: 1, EagerPrefetch: true, Lease: h.Capabilities.ShortLease, Logger: log})
	unblock := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unblock) // before the worker stops, should the case fail
	// The renewer handles the loss of quick's lease while slow runs.
	await(t, lost, "the renewer meets the lost lease")
	unblock()
	if r := d.wait(slowID); r.State != stemtype.StateSucceeded {
		t.Fatalf("slow: %+v", r)
	}
	d.waitNotRunning()
	if n := quickRuns.Load(); n != 0 {
		t.Fatalf("a task whose lease was lost ran %d time(s)", n)
	}
	if r, err := d.roles.Results.Get(context.Background(), quickID); err != nil || r.State != stemtype.StateSucceeded ||
		r.WorkerID != "other" {
		t.Fatalf("the other worker's outcome was overwritten: %+v %v", r, err)
	}
}

// revokeOnList revokes a task right after the worker's first List of the
// revoke store: the revoke is stored and published while the worker starts.
type revokeOnList struct {
	stemdriver.RevokeStore
	once   sync.Once
	revoke func()
}

func (s *revokeOnList) List(ctx context.Context, ns string) ([]stemtype.RevokeRecord, error) {
	recs, err := s.RevokeStore.List(ctx, ns)
	s.once.Do(s.revoke)
	return recs, err
}

// A revoke stored and published while a worker starts (after it read the
// store) still reaches it: the task never runs and ends cancelled.
func testRevokeDuringWorkerStartIsHonoured(t *testing.T, h Harness) {
	d := open(t, h)
	var ran atomic.Int32
	stem.Register(d.reg, "victim", func(*stem.TaskContext, stem.Args) (any, error) {
		ran.Add(1)
		return nil, nil
	}, stem.TaskOptions{})
	id := d.enqueue("victim", stem.EnqueueOptions{Countdown: 200 * time.Millisecond})
	store := &revokeOnList{RevokeStore: d.roles.Revokes, revoke: func() {
		if _, err := d.ctl.Revoke(context.Background(), stem.Target{Timeout: 50 * time.Millisecond},
			stem.RevokeOptions{TaskIDs: []string{id}, Reason: "during start"}); err != nil {
			t.Error(err)
		}
	}}
	d.startWorker(stem.WorkerConfig{Revokes: store})
	d.waitDepth(stemtype.DefaultQueue, 0)
	d.waitNotRunning()
	if r := d.wait(id); ran.Load() != 0 || r.State != stemtype.StateCancelled || r.Meta[stemtype.MetaRevokedReason] != "during start" {
		t.Fatalf("ran %d time(s), result %+v", ran.Load(), r)
	}
}

// stuckBroker's Retry blocks until its context ends: a partitioned broker.
type stuckBroker struct{ stemdriver.Broker }

func (b stuckBroker) Retry(ctx context.Context, _ stemdriver.Delivery, _ *stemtype.Envelope) error {
	<-ctx.Done()
	return ctx.Err()
}

// Shutdown is bounded even when the broker hangs on the last
// acknowledgements: what cannot be settled is left to lease expiry.
func testShutdownIsBoundedWhenTheBrokerHangs(t *testing.T, h Harness) {
	d := open(t, h)
	failed := make(chan struct{}, 8)
	stem.Register(d.reg, "fails", func(*stem.TaskContext, stem.Args) (any, error) {
		failed <- struct{}{}
		return nil, errors.New("boom")
	}, stem.TaskOptions{MaxRetries: 3})
	for range 8 {
		d.enqueue("fails", stem.EnqueueOptions{})
	}
	_, stop := d.startWorker(stem.WorkerConfig{Broker: stuckBroker{d.roles.Broker}, ShutdownTimeout: 100 * time.Millisecond})
	for range 8 {
		<-failed
	}
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * waitBound): // a liveness bound, far above the grace periods
		t.Fatal("Run did not return with the broker hanging on Retry")
	}
}

// perQueueReceipts numbers receipts per queue from 1, as a broker whose
// receipts are unique within a queue only (Redis stream ids) may: two
// queues hand out the same receipt.
type perQueueReceipts struct {
	stemdriver.Broker
	mu   sync.Mutex
	next map[string]int
	real map[string]string // queue + fake receipt -> the driver's receipt
	// extended receives the queue of every delivery whose lease was
	// extended, while it has room.
	extended chan string
}

func (b *perQueueReceipts) Claim(ctx context.Context, req stemdriver.ClaimRequest) ([]stemdriver.Delivery, error) {
	ds, err := b.Broker.Claim(ctx, req)
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range ds {
		b.next[ds[i].Queue]++
		fake := fmt.Sprint(b.next[ds[i].Queue])
		b.real[ds[i].Queue+"/"+fake] = ds[i].Receipt
		ds[i].Receipt = fake
	}
	return ds, err
}

func (b *perQueueReceipts) orig(ds ...stemdriver.Delivery) []stemdriver.Delivery {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]stemdriver.Delivery, len(ds))
	for i, d := range ds {
		d.Receipt = b.real[d.Queue+"/"+d.Receipt]
		out[i] = d
	}
	return out
}

func (b *perQueueReceipts) ExtendLease(ctx context.Context, d stemdriver.Delivery, l time.Duration) error {
	err := b.Broker.ExtendLease(ctx, b.orig(d)[0], l)
	if err == nil {
		select {
		case b.extended <- d.Queue:
		default: // the case has seen enough
		}
	}
	return err
}
func (b *perQueueReceipts) Ack(ctx context.Context, ds ...stemdriver.Delivery) error {
	return b.Broker.Ack(ctx, b.orig(ds...)...)
}
func (b *perQueueReceipts) Retry(ctx context.Context, d stemdriver.Delivery, next *stemtype.Envelope) error {
	return b.Broker.Retry(ctx, b.orig(d)[0], next)
}
func (b *perQueueReceipts) Release(ctx context.Context, ds ...stemdriver.Delivery) error {
	return b.Broker.Release(ctx, b.orig(ds...)...)
}
func (b *perQueueReceipts) DeadLetter(ctx context.Context, d stemdriver.Delivery, reason string) error {
	return b.Broker.DeadLetter(ctx, b.orig(d)[0], reason)
}

// Two tasks of different queues with the same receipt are both held and
// renewed: the lease of each is extended again and again while it runs,
// and each runs once. (The lease leaves the renewer scheduling slack: a
// loaded -race run must not lapse it; the case waits for renewals, not
// for lease periods to pass.)
func testSameReceiptInTwoQueues(t *testing.T, h Harness) {
	d := open(t, h)
	release := make(chan struct{})
	started := make(chan struct{}, 2)
	runs := map[string]*atomic.Int32{"a": {}, "b": {}}
	for _, q := range []string{"a", "b"} {
		stem.Register(d.reg, "long-"+q, func(*stem.TaskContext, stem.Args) (any, error) {
			runs[q].Add(1)
			started <- struct{}{}
			<-release
			return nil, nil
		}, stem.TaskOptions{Queue: q})
	}
	ida := d.enqueue("long-a", stem.EnqueueOptions{})
	idb := d.enqueue("long-b", stem.EnqueueOptions{})
	broker := &perQueueReceipts{Broker: d.roles.Broker, next: map[string]int{}, real: map[string]string{},
		extended: make(chan string, 16)}
	d.startWorker(stem.WorkerConfig{Broker: broker, Queues: []string{"a", "b"}, Concurrency: 2, Lease: time.Second})
	unblock := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unblock) // before the worker stops, should the case fail
	await(t, started, "the first task starts")
	await(t, started, "the second task starts")
	// A delivery the worker forgot (held under the other's key) would never
	// be extended again; a failure detector bounds the wait.
	renewed := map[string]int{}
	deadline := time.After(waitBound)
	for renewed["a"] < 2 || renewed["b"] < 2 {
		select {
		case q := <-broker.extended:
			renewed[q]++
		case <-deadline:
			t.Fatalf("leases not renewed while the tasks run: %v", renewed)
		}
	}
	unblock()
	for _, id := range []string{ida, idb} {
		if r := d.wait(id); r.State != stemtype.StateSucceeded {
			t.Fatalf("%s: %+v", id, r)
		}
	}
	if runs["a"].Load() != 1 || runs["b"].Load() != 1 {
		t.Fatalf("runs a=%d b=%d, want 1 each", runs["a"].Load(), runs["b"].Load())
	}
}

// readOnlyRevokes cannot prune (a revoke file in a directory the worker
// cannot write) but reads fine.
type readOnlyRevokes struct{ stemdriver.RevokeStore }

func (readOnlyRevokes) Prune(context.Context, string, time.Time) (int, error) {
	return 0, errors.New("read-only directory")
}

// A worker whose revoke store cannot be pruned still starts and honours
// the revokes it reads.
func testWorkerStartsWhenRevokesCannotBePruned(t *testing.T, h Harness) {
	d := open(t, h)
	var ran atomic.Int32
	stem.Register(d.reg, "victim", func(*stem.TaskContext, stem.Args) (any, error) {
		ran.Add(1)
		return nil, nil
	}, stem.TaskOptions{})
	id := d.enqueue("victim", stem.EnqueueOptions{})
	if _, err := d.ctl.Revoke(context.Background(), target(), stem.RevokeOptions{TaskIDs: []string{id}}); err != nil {
		t.Fatal(err)
	}
	d.startWorker(stem.WorkerConfig{Revokes: readOnlyRevokes{d.roles.Revokes}})
	d.waitDepth(stemtype.DefaultQueue, 0)
	d.waitNotRunning()
	if r := d.wait(id); ran.Load() != 0 || r.State != stemtype.StateCancelled {
		t.Fatalf("ran %d time(s), result %+v", ran.Load(), r)
	}
}

// hangingExtend's ExtendLease for a lease of a minute blocks until its
// context ends, a broker that stopped answering, and reports the
// context's cause.
type hangingExtend struct {
	stemdriver.Broker
	causes chan error
}

func (b *hangingExtend) ExtendLease(ctx context.Context, d stemdriver.Delivery, l time.Duration) error {
	if l == time.Minute {
		<-ctx.Done()
		select {
		case b.causes <- context.Cause(ctx): // the first to end: the task's call
		default: // the renewer's, at shutdown
		}
		return ctx.Err()
	}
	return b.Broker.ExtendLease(ctx, d, l)
}

// ExtendLease of an inline task is bounded by the task's context: once
// the task is cancelled (here: its time limit) a call that reached the
// worker ends with the task's cancellation cause instead of waiting for a
// broker that does not answer.
func testInlineExtendLeaseFollowsTaskContext(t *testing.T, h Harness) {
	d := open(t, h)
	stem.Register(d.reg, "stuck-extend", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		return nil, tc.ExtendLease(time.Minute)
	}, stem.TaskOptions{TimeLimit: 50 * time.Millisecond})
	b := &hangingExtend{Broker: d.roles.Broker, causes: make(chan error, 1)}
	d.startWorker(stem.WorkerConfig{Broker: b, Lease: 30 * time.Second})
	id := d.enqueue("stuck-extend", stem.EnqueueOptions{})
	if cause := await(t, b.causes, "the stuck ExtendLease ends"); !errors.Is(cause, stem.ErrTimeLimit) {
		t.Fatalf("the stuck ExtendLease ended with %v, want the task's cause %v", cause, stem.ErrTimeLimit)
	}
	if r := d.wait(id); r.State != stemtype.StateFailed || r.Error == nil || r.Error.Kind != "time_limit" {
		t.Fatalf("got %+v", r)
	}
}
