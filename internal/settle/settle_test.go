package settle_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stem-go/stem/internal/settle"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemtype"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const ns = "settle"

// env is one memory deployment with a writer over it.
type env struct {
	t       *testing.T
	hub     *stemmem.Hub
	broker  stemdriver.Broker
	results stemdriver.ResultBackend

	mu   sync.Mutex
	done map[*stemdriver.Delivery]int // Config.Done calls per delivery
}

func newEnv(t *testing.T) *env {
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: ns, Logger: quiet()}
	return &env{t: t, hub: hub, broker: hub.Broker(opts), results: hub.Results(opts),
		done: make(map[*stemdriver.Delivery]int)}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// writer returns a writer over e's broker and results (or the given
// wrappers of them), running until the test ends unless closed first.
func (e *env) writer(broker stemdriver.Broker, results stemdriver.ResultBackend) (*settle.Writer, context.CancelFunc) {
	if broker == nil {
		broker = e.broker
	}
	if results == nil {
		results = e.results
	}
	w := settle.New(settle.Config{Broker: broker, Results: results, Logger: quiet(), Done: func(d *stemdriver.Delivery) {
		e.mu.Lock()
		e.done[d]++
		e.mu.Unlock()
	}})
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { w.Run(ctx); close(ran) }()
	e.t.Cleanup(func() {
		w.Close(context.Background())
		cancel()
		<-ran
	})
	return w, cancel
}

// claim publishes n tasks and claims them all, leased for a minute.
func (e *env) claim(n int) []*stemdriver.Delivery {
	e.t.Helper()
	ctx := context.Background()
	envs := make([]*stemtype.Envelope, n)
	for i := range envs {
		envs[i] = &stemtype.Envelope{ID: fmt.Sprintf("task-%04d", i), Task: "t", Queue: "q", CreatedAt: time.Now().UTC()}
	}
	if err := e.broker.Publish(ctx, envs...); err != nil {
		e.t.Fatal(err)
	}
	var out []*stemdriver.Delivery
	for len(out) < n {
		ds, err := e.broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: n - len(out),
			Lease: time.Minute, Wait: time.Second})
		if err != nil {
			e.t.Fatal(err)
		}
		for i := range ds {
			out = append(out, &ds[i])
		}
	}
	return out
}

// held reports whether d is still leased to its claim (neither acked,
// retried, released nor dead-lettered).
func (e *env) held(d *stemdriver.Delivery) bool {
	e.t.Helper()
	err := e.broker.ExtendLease(context.Background(), *d, time.Minute)
	if err != nil && !errors.Is(err, stemdriver.ErrLeaseLost) {
		e.t.Fatal(err)
	}
	return err == nil
}

func (e *env) doneCalls(d *stemdriver.Delivery) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.done[d]
}

func result(id string, st stemtype.State) *stemtype.TaskResult {
	now := time.Now().UTC()
	return &stemtype.TaskResult{ID: id, Task: "t", Queue: "q", State: st, UpdatedAt: now}
}

// orderCheck records, at each Ack, whether every acked task's result was
// written already.
type orderCheck struct {
	stemdriver.Broker
	results stemdriver.ResultBackend
	acked   atomic.Int64
	early   atomic.Int64 // acks of tasks with no final result recorded
}

func (b *orderCheck) Ack(ctx context.Context, ds ...stemdriver.Delivery) error {
	for _, d := range ds {
		r, err := b.results.Get(ctx, d.Envelope.ID)
		if err != nil || r.State != stemtype.StateSucceeded {
			b.early.Add(1)
		}
	}
	b.acked.Add(int64(len(ds)))
	return b.Broker.Ack(ctx, ds...)
}

// Every outcome is written before its delivery is acknowledged, over all
// shards and batches; each delivery is acknowledged and reported done
// once.
func TestResultWrittenBeforeAck(t *testing.T) {
	e := newEnv(t)
	const n = 600
	ds := e.claim(n)
	b := &orderCheck{Broker: e.broker, results: e.results}
	w, _ := e.writer(b, nil)
	for _, d := range ds {
		w.Queue(settle.Settlement{Result: result(d.Envelope.ID, stemtype.StateStarted)})
		w.Queue(settle.Settlement{Delivery: d, Result: result(d.Envelope.ID, stemtype.StateSucceeded), Op: settle.Ack})
	}
	w.Close(context.Background())
	if got := b.acked.Load(); got != n {
		t.Fatalf("acked %d deliveries, want %d", got, n)
	}
	if early := b.early.Load(); early != 0 {
		t.Fatalf("%d deliveries were acked before their result was written", early)
	}
	for _, d := range ds {
		if e.held(d) {
			t.Fatalf("delivery of %s still held after Close", d.Envelope.ID)
		}
		if c := e.doneCalls(d); c != 1 {
			t.Fatalf("Done called %d times for %s, want 1", c, d.Envelope.ID)
		}
	}
}

// failingResults is the real memory result backend whose Put fails.
type failingResults struct {
	stemdriver.ResultBackend
	puts atomic.Int64
}

func (r *failingResults) Put(context.Context, ...*stemtype.TaskResult) error {
	r.puts.Add(1)
	return errors.New("injected: result backend down")
}

// An outcome whose result cannot be written is never acknowledged: its
// delivery stays leased (left to lease expiry) and is reported done. A
// settlement that records no result is settled all the same.
func TestUnwrittenResultIsNeverAcked(t *testing.T) {
	e := newEnv(t)
	ds := e.claim(2)
	res := &failingResults{ResultBackend: e.results}
	w, _ := e.writer(nil, res)
	w.Queue(settle.Settlement{Delivery: ds[0], Result: result(ds[0].Envelope.ID, stemtype.StateSucceeded), Op: settle.Ack})
	w.Queue(settle.Settlement{Delivery: ds[1], Op: settle.Ack}) // found finished already: no result of its own
	w.Close(context.Background())                               // a closing writer gives up after a few tries
	if res.puts.Load() == 0 {
		t.Fatal("the result was never tried")
	}
	if !e.held(ds[0]) {
		t.Fatal("a delivery was acked although its result was not written")
	}
	if e.held(ds[1]) {
		t.Fatal("a settlement without a result was held up by another's failed write")
	}
	for _, d := range ds {
		if c := e.doneCalls(d); c != 1 {
			t.Fatalf("Done called %d times for %s, want 1", c, d.Envelope.ID)
		}
	}
}

// A progress write is dropped once its Superseded flag is set, even when
// it was queued before: it never follows its task's outcome.
func TestSupersededProgressIsDropped(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var settled, open atomic.Bool
	w := settle.New(settle.Config{Broker: e.broker, Results: e.results, Logger: quiet()})
	// Queued before the writer runs, so the flag is set before any flush.
	w.Queue(settle.Settlement{Result: result("dropped", stemtype.StateStarted), Superseded: &settled})
	w.Queue(settle.Settlement{Result: result("kept", stemtype.StateStarted), Superseded: &open})
	settled.Store(true)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	ran := make(chan struct{})
	go func() { w.Run(runCtx); close(ran) }()
	w.Close(ctx)
	<-ran
	if r, err := e.results.Get(ctx, "dropped"); !errors.Is(err, stemdriver.ErrNotFound) {
		t.Fatalf("a superseded progress write was written: %+v %v", r, err)
	}
	if r, err := e.results.Get(ctx, "kept"); err != nil || r.State != stemtype.StateStarted {
		t.Fatalf("a live progress write was not written: %+v %v", r, err)
	}
}

// The writes of one task land in the order they were queued, whatever
// the shards and batches: the last one queued is the one stored.
func TestOneTasksWritesStayInOrder(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	w, _ := e.writer(nil, nil)
	const n, writes = 300, 20
	for k := range writes {
		for i := range n {
			r := result(fmt.Sprintf("task-%04d", i), stemtype.StateStarted)
			r.Progress = &stemtype.Progress{Percent: float64(k)}
			w.Queue(settle.Settlement{Result: r})
		}
	}
	w.Close(ctx)
	for i := range n {
		id := fmt.Sprintf("task-%04d", i)
		r, err := e.results.Get(ctx, id)
		if err != nil || r.Progress == nil || r.Progress.Percent != writes-1 {
			t.Fatalf("task %s: stored %+v (%v), want the last write queued (progress %d)", id, r, err, writes-1)
		}
	}
}

// Retry replaces the delivery with the next attempt, Release makes it
// claimable again, DeadLetter moves it to the dead letters with its
// reason; each after its result is written.
func TestOps(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	ds := e.claim(3)
	w, _ := e.writer(nil, nil)
	next := *ds[0].Envelope
	next.Attempt++
	w.Queue(settle.Settlement{Delivery: ds[0], Result: result(next.ID, stemtype.StateRetry), Op: settle.Retry, Next: &next})
	w.Queue(settle.Settlement{Delivery: ds[1], Op: settle.Release})
	w.Queue(settle.Settlement{Delivery: ds[2], Result: result(ds[2].Envelope.ID, stemtype.StateFailed), Op: settle.DeadLetter,
		Reason: "undecodable"})
	w.Close(ctx)

	again, err := e.broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c2", Max: 10,
		Lease: time.Minute, Wait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, d := range again {
		got[d.Envelope.ID] = d.Envelope.Attempt
	}
	if len(got) != 2 || got[next.ID] != 1 {
		t.Fatalf("claimable after settling: %v; want %s at attempt 1 and the released %s", got, next.ID, ds[1].Envelope.ID)
	}
	if _, ok := got[ds[1].Envelope.ID]; !ok {
		t.Fatalf("the released task %s is not claimable: %v", ds[1].Envelope.ID, got)
	}
	dead := e.hub.DeadLetters(ns, "q")
	if len(dead) != 1 || dead[0].Reason != "undecodable" {
		t.Fatalf("dead letters: %+v", dead)
	}
	for i, st := range []stemtype.State{stemtype.StateRetry, "", stemtype.StateFailed} {
		if st == "" {
			continue
		}
		if r, err := e.results.Get(ctx, ds[i].Envelope.ID); err != nil || r.State != st {
			t.Fatalf("result of %s: %+v %v, want %s", ds[i].Envelope.ID, r, err, st)
		}
	}
}

// A delivery whose lease is gone (acknowledged elsewhere) is done at the
// first refusal: the writer does not retry an ack no one can make.
func TestLostLeaseIsNotRetried(t *testing.T) {
	e := newEnv(t)
	ds := e.claim(1)
	if err := e.broker.Ack(context.Background(), *ds[0]); err != nil {
		t.Fatal(err)
	}
	acks := &countingAcks{Broker: e.broker}
	w, _ := e.writer(acks, nil)
	w.Queue(settle.Settlement{Delivery: ds[0], Result: result(ds[0].Envelope.ID, stemtype.StateSucceeded), Op: settle.Ack})
	w.Close(context.Background())
	if n := acks.calls.Load(); n != 1 {
		t.Fatalf("ack of a lost lease tried %d times, want 1", n)
	}
	if c := e.doneCalls(ds[0]); c != 1 {
		t.Fatalf("Done called %d times, want 1", c)
	}
}

type countingAcks struct {
	stemdriver.Broker
	calls atomic.Int64
}

func (b *countingAcks) Ack(ctx context.Context, ds ...stemdriver.Delivery) error {
	b.calls.Add(1)
	return b.Broker.Ack(ctx, ds...)
}

// Settlements queued after Close are dropped and reported done, however
// many: more than a shard's queue holds never block.
func TestQueueAfterCloseDrops(t *testing.T) {
	e := newEnv(t)
	const n = 1100 // above the 1,024 settlements a shard queues
	ds := e.claim(n)
	w, _ := e.writer(nil, nil)
	w.Close(context.Background())
	for _, d := range ds {
		w.Queue(settle.Settlement{Delivery: d, Result: result(d.Envelope.ID, stemtype.StateSucceeded), Op: settle.Ack})
	}
	for _, d := range ds {
		if c := e.doneCalls(d); c != 1 {
			t.Fatalf("Done called %d times for %s, want 1", c, d.Envelope.ID)
		}
	}
	if !e.held(ds[0]) {
		t.Fatal("a settlement queued after Close was acked")
	}
}

// hangingResults is the real memory result backend whose Put hangs until
// its context ends, and says so on entered.
type hangingResults struct {
	stemdriver.ResultBackend
	once    sync.Once
	entered chan struct{}
}

func (r *hangingResults) Put(ctx context.Context, _ ...*stemtype.TaskResult) error {
	r.once.Do(func() { close(r.entered) })
	<-ctx.Done()
	return ctx.Err()
}

// Close's context bounds the final flush: with the result backend hung,
// Close returns once it ends, and the unwritten outcome is not acked.
// As in the worker, the writer's own context ends with the final one.
func TestCloseBoundedByContext(t *testing.T) {
	e := newEnv(t)
	ds := e.claim(1)
	res := &hangingResults{ResultBackend: e.results, entered: make(chan struct{})}
	w, cancelRun := e.writer(nil, res)
	final, cancelFinal := context.WithCancel(context.Background())
	context.AfterFunc(final, cancelRun)
	w.Queue(settle.Settlement{Delivery: ds[0], Result: result(ds[0].Envelope.ID, stemtype.StateSucceeded), Op: settle.Ack})
	<-res.entered
	closed := make(chan struct{})
	go func() { w.Close(final); close(closed) }()
	cancelFinal()
	select {
	case <-closed:
	case <-time.After(30 * time.Second): // a failure detector: Close returns at once
		t.Fatal("Close did not return once its context ended")
	}
	if !e.held(ds[0]) {
		t.Fatal("an outcome whose result was never written was acked")
	}
	if c := e.doneCalls(ds[0]); c != 1 {
		t.Fatalf("Done called %d times, want 1", c)
	}
}

// Without a result backend, bare writes are dropped and settlements still
// settle their deliveries.
func TestNoResultBackend(t *testing.T) {
	e := newEnv(t)
	ds := e.claim(1)
	w := settle.New(settle.Config{Broker: e.broker})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan struct{})
	go func() { w.Run(ctx); close(ran) }()
	w.Queue(settle.Settlement{Result: result(ds[0].Envelope.ID, stemtype.StateStarted)})
	w.Queue(settle.Settlement{Delivery: ds[0], Result: result(ds[0].Envelope.ID, stemtype.StateSucceeded), Op: settle.Ack})
	w.Close(ctx)
	<-ran
	if e.held(ds[0]) {
		t.Fatal("a settlement was not acked without a result backend")
	}
	if _, err := e.results.Get(ctx, ds[0].Envelope.ID); !errors.Is(err, stemdriver.ErrNotFound) {
		t.Fatalf("a result was written with no result backend configured: %v", err)
	}
}
