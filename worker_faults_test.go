package stem_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// Fault-injecting wrappers around the real in-memory drivers: each test
// changes one behaviour of a driver and checks the worker stays correct.

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
func TestOutcomeThatCannotBeRecordedIsNotAcknowledged(t *testing.T) {
	e := newEnv(t)
	ran := make(chan struct{}, 1)
	e.reg.MustAdd(stem.Task{Name: "job", Run: func(*stem.TaskContext, stem.Args) (any, error) {
		ran <- struct{}{}
		return "ok", nil
	}})
	id := e.enqueue("job", nil, stem.EnqueueOptions{})
	res := &downResults{ResultBackend: e.results}
	res.down.Store(true)
	e.results = res
	_, stop := e.startWorker(stem.WorkerConfig{Lease: 200 * time.Millisecond, ShutdownTimeout: 100 * time.Millisecond})
	<-ran
	stop()
	ds, err := e.broker.Claim(context.Background(), stemdriver.ClaimRequest{Queues: []string{"default"},
		Consumer: "next", Max: 1, Lease: time.Second, Wait: 10 * time.Second})
	if err != nil || len(ds) != 1 || ds[0].Envelope.ID != id {
		t.Fatalf("the task whose outcome was not recorded did not come back: %v %v", ds, err)
	}
}

// lossyBroker plays another worker that took task lostID over: when this
// worker first extends that task's lease, the other one has already run it
// to succeeded and acknowledged it, and the extension reports
// ErrLeaseLost. The worker renews leases one after the other in one
// goroutine, so once it extends another task's lease after that, it has
// handled the loss: lost is closed then.
type lossyBroker struct {
	stemdriver.Broker
	results  stemdriver.ResultBackend
	lostID   string
	reported atomic.Bool
	once     sync.Once
	lost     chan struct{}
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
	if b.reported.Load() {
		b.once.Do(func() { close(b.lost) })
	}
	return b.Broker.ExtendLease(ctx, d, l)
}

// A claimed task whose lease is lost while it waits in prefetch is not
// started: another worker owns it.
func TestTaskLostInPrefetchIsNotStarted(t *testing.T) {
	e := newEnv(t)
	release := make(chan struct{})
	var quickRuns atomic.Int32
	e.reg.MustAdd(stem.Task{Name: "slow", Run: func(*stem.TaskContext, stem.Args) (any, error) {
		<-release
		return nil, nil
	}})
	e.reg.MustAdd(stem.Task{Name: "quick", Run: func(*stem.TaskContext, stem.Args) (any, error) {
		quickRuns.Add(1)
		return nil, nil
	}})
	slowID := e.enqueue("slow", nil, stem.EnqueueOptions{})
	quickID := e.enqueue("quick", nil, stem.EnqueueOptions{})
	b := &lossyBroker{Broker: e.broker, results: e.results, lostID: quickID, lost: make(chan struct{})}
	e.broker = b
	e.startWorker(stem.WorkerConfig{Concurrency: 1, Prefetch: 1, EagerPrefetch: true, Lease: 60 * time.Millisecond})
	<-b.lost // the renewer handled the loss of quick's lease while slow runs
	close(release)
	if r := e.wait(slowID); r.State != stemtype.StateSucceeded {
		t.Fatalf("slow: %+v", r)
	}
	e.waitNotRunning(t)
	if n := quickRuns.Load(); n != 0 {
		t.Fatalf("a task whose lease was lost ran %d time(s)", n)
	}
	if r, _ := e.results.Get(context.Background(), quickID); r.State != stemtype.StateSucceeded || r.WorkerID != "other" {
		t.Fatalf("the other worker's outcome was overwritten: %+v", r)
	}
}

// waitNotRunning waits until the worker holds no task (stats inflight 0)
// and its queue is settled, by asking through the control plane.
func (e *env) waitNotRunning(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		r, err := e.controller().Stats(context.Background(), stem.Target{Timeout: time.Second})
		if err == nil && len(r.Replies) > 0 && !containsInflight(r) {
			return
		}
	}
	t.Fatal("the worker kept running tasks")
}

func containsInflight(r *stem.Replies) bool {
	for _, rep := range r.Replies {
		if len(rep.Payload) > 0 && !jsonHasZero(rep.Payload, "inflight") {
			return true
		}
	}
	return false
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
// store) still reaches it.
func TestRevokeDuringWorkerStartIsHonoured(t *testing.T) {
	e := newEnv(t)
	var ran atomic.Int32
	e.reg.MustAdd(stem.Task{Name: "victim", Run: func(*stem.TaskContext, stem.Args) (any, error) {
		ran.Add(1)
		return nil, nil
	}})
	id := e.enqueue("victim", nil, stem.EnqueueOptions{Countdown: 200 * time.Millisecond})
	store := &revokeOnList{RevokeStore: e.revokes, revoke: func() {
		if _, _, err := e.controller().Revoke(context.Background(), stem.Target{Timeout: 50 * time.Millisecond},
			stem.RevokeOptions{TaskIDs: []string{id}, Reason: "during start"}); err != nil {
			t.Error(err)
		}
	}}
	e.startWorker(stem.WorkerConfig{Revokes: store})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if n, _ := e.broker.Depth(context.Background(), "default"); n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the task never left the queue")
		}
	}
	e.waitNotRunning(t)
	if r := e.wait(id); ran.Load() != 0 || r.State != stemtype.StateCancelled || r.Meta[stemtype.MetaRevokedReason] != "during start" {
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
func TestShutdownIsBoundedWhenTheBrokerHangs(t *testing.T) {
	e := newEnv(t)
	failed := make(chan struct{}, 8)
	e.reg.MustAdd(stem.Task{Name: "fails", Options: stem.TaskOptions{MaxRetries: 3},
		Run: func(*stem.TaskContext, stem.Args) (any, error) {
			failed <- struct{}{}
			return nil, errors.New("boom")
		}})
	for range 8 {
		e.enqueue("fails", nil, stem.EnqueueOptions{})
	}
	e.broker = stuckBroker{e.broker}
	_, stop := e.startWorker(stem.WorkerConfig{ShutdownTimeout: 100 * time.Millisecond})
	for range 8 {
		<-failed
	}
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(time.Minute): // a liveness bound, far above the grace periods
		t.Fatal("Run did not return with the broker hanging on Retry")
	}
}

// jsonHasZero reports whether the JSON object doc has field name equal to 0.
func jsonHasZero(doc []byte, name string) bool {
	var m map[string]any
	if json.Unmarshal(doc, &m) != nil {
		return false
	}
	v, ok := m[name].(float64)
	return ok && v == 0
}

// perQueueReceipts numbers receipts per queue from 1, as a broker whose
// receipts are unique within a queue only (Redis stream ids) may: two
// queues hand out the same receipt.
type perQueueReceipts struct {
	stemdriver.Broker
	mu   sync.Mutex
	next map[string]int
	real map[string]string // queue + fake receipt -> the driver's receipt
	// extended, if set, receives the queue of every delivery whose lease
	// was extended.
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
	if err == nil && b.extended != nil {
		select {
		case b.extended <- d.Queue:
		default: // the test has seen enough
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
// loaded -race run must not lapse it; the test waits for renewals, not
// for lease periods to pass.)
func TestSameReceiptInTwoQueues(t *testing.T) {
	e := newEnv(t)
	release := make(chan struct{})
	started := make(chan struct{}, 2)
	runs := map[string]*atomic.Int32{"a": {}, "b": {}}
	for _, q := range []string{"a", "b"} {
		e.reg.MustAdd(stem.Task{Name: "long-" + q, Options: stem.TaskOptions{Queue: q},
			Run: func(*stem.TaskContext, stem.Args) (any, error) {
				runs[q].Add(1)
				started <- struct{}{}
				<-release
				return nil, nil
			}})
	}
	ida := e.enqueue("long-a", nil, stem.EnqueueOptions{})
	idb := e.enqueue("long-b", nil, stem.EnqueueOptions{})
	broker := &perQueueReceipts{Broker: e.broker, next: map[string]int{}, real: map[string]string{},
		extended: make(chan string, 16)}
	e.broker = broker
	e.startWorker(stem.WorkerConfig{Queues: []string{"a", "b"}, Concurrency: 2, Lease: time.Second})
	<-started
	<-started
	// A delivery the worker forgot (held under the other's key) would never
	// be extended again; a failure detector bounds the wait.
	renewed := map[string]int{}
	deadline := time.After(30 * time.Second)
	for renewed["a"] < 2 || renewed["b"] < 2 {
		select {
		case q := <-broker.extended:
			renewed[q]++
		case <-deadline:
			t.Fatalf("leases not renewed while the tasks run: %v", renewed)
		}
	}
	close(release)
	for _, id := range []string{ida, idb} {
		if r := e.wait(id); r.State != stemtype.StateSucceeded {
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
func TestWorkerStartsWhenRevokesCannotBePruned(t *testing.T) {
	e := newEnv(t)
	var ran atomic.Int32
	e.reg.MustAdd(stem.Task{Name: "victim", Run: func(*stem.TaskContext, stem.Args) (any, error) {
		ran.Add(1)
		return nil, nil
	}})
	id := e.enqueue("victim", nil, stem.EnqueueOptions{})
	if _, _, err := e.controller().Revoke(context.Background(), stem.Target{Timeout: 10 * time.Millisecond},
		stem.RevokeOptions{TaskIDs: []string{id}}); err != nil {
		t.Fatal(err)
	}
	e.startWorker(stem.WorkerConfig{Revokes: readOnlyRevokes{e.revokes}})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if n, _ := e.broker.Depth(context.Background(), "default"); n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the task never left the queue")
		}
	}
	e.waitNotRunning(t)
	if r := e.wait(id); ran.Load() != 0 || r.State != stemtype.StateCancelled {
		t.Fatalf("ran %d time(s), result %+v", ran.Load(), r)
	}
}
