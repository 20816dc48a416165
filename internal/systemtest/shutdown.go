package systemtest

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// A worker that dies holding a task (here: a consumer that claims it with
// a short lease, then neither renews, acknowledges nor releases it, which
// is all a dead worker leaves behind) loses it once its lease expires:
// another worker finishes the work, and the dead one's late
// acknowledgement is refused.
func testDeadWorkerLeaseExpires(t *testing.T, h Harness) {
	d := open(t, h)
	ran := make(chan string, 2)
	stem.Register(d.reg, "work", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		ran <- tc.TaskID()
		return "done", nil
	}, stem.TaskOptions{})
	id := d.enqueue("work", stem.EnqueueOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	ds, err := d.roles.Broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{stemtype.DefaultQueue},
		Consumer: "dead", Max: 1, Lease: h.Capabilities.ShortLease, Wait: waitBound})
	if err != nil || len(ds) != 1 || ds[0].Envelope == nil || ds[0].Envelope.ID != id {
		t.Fatalf("the dead worker's claim: %+v %v", ds, err)
	}
	d.startWorker(stem.WorkerConfig{ID: "alive"})
	res := d.wait(id)
	if res.State != stemtype.StateSucceeded || string(res.Result) != `"done"` || res.WorkerID != "alive" {
		t.Fatalf("got %+v", res)
	}
	if got := <-ran; got != id {
		t.Fatalf("ran %s, want %s", got, id)
	}
	if err := d.roles.Broker.Ack(ctx, ds[0]); !errors.Is(err, stemdriver.ErrLeaseLost) {
		t.Fatalf("the dead worker's late ack: %v, want ErrLeaseLost", err)
	}
}

// A worker shutting down warmly releases at once a task it claimed and has
// not started, so another worker runs it while the first still lets its
// running task finish.
func testWarmShutdownReleasesUnstarted(t *testing.T, h Harness) {
	d := open(t, h)
	gate := make(chan struct{})
	blockStarted := make(chan struct{})
	stem.Register(d.reg, "block", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		close(blockStarted)
		<-gate
		return "finished", nil
	}, stem.TaskOptions{})
	ranOn := make(chan string, 2)
	stem.Register(d.reg, "next", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		ranOn <- tc.TaskID()
		return nil, nil
	}, stem.TaskOptions{})
	// The first worker's lease outlasts the whole test: only a release
	// lets another worker claim what it holds.
	_, stop1 := d.startWorker(stem.WorkerConfig{ID: "w1", Concurrency: 1, Prefetch: 1, EagerPrefetch: true,
		Lease: 10 * time.Minute, ShutdownTimeout: 10 * time.Minute})
	release := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(release) // before the worker stops, should the case fail
	blocker := d.enqueue("block", stem.EnqueueOptions{})
	await(t, blockStarted, "the blocker starts")
	next := d.enqueue("next", stem.EnqueueOptions{})
	d.waitDepth(stemtype.DefaultQueue, 0) // w1 holds next in its prefetch
	stopped := make(chan struct{})
	go func() { stop1(); close(stopped) }()
	t.Cleanup(func() { release(); <-stopped }) // w1's Run has returned when the case ends
	d.startWorker(stem.WorkerConfig{ID: "w2"})
	res := d.wait(next)
	if res.State != stemtype.StateSucceeded || res.WorkerID != "w2" || res.Attempt != 0 {
		t.Fatalf("the task released at shutdown: %+v", res)
	}
	release()
	<-stopped
	if r := d.wait(blocker); r.State != stemtype.StateSucceeded || r.WorkerID != "w1" || string(r.Result) != `"finished"` {
		t.Fatalf("the task running at shutdown: %+v", r)
	}
	if got := <-ranOn; got != next {
		t.Fatalf("ran %s, want %s", got, next)
	}
	noneOf(t, ranOn, "the released task ran twice")
}

// A live worker renews the leases of long tasks, so a task that outlives
// its lease many times over is not claimed by another consumer, and runs
// once.
func testLeaseRenewedWhileTaskRuns(t *testing.T, h Harness) {
	d := open(t, h)
	release := make(chan struct{})
	var runs atomic.Int32
	stem.Register(d.reg, "long", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		runs.Add(1)
		<-release
		return nil, nil
	}, stem.TaskOptions{})
	// The lease leaves the renewer (a wake-up every quarter lease, a renewal
	// once a third of it has passed) several hundred milliseconds of slack,
	// so a loaded -race run does not lapse it through scheduling delay.
	d.startWorker(stem.WorkerConfig{ID: "a", Lease: time.Second})
	unblock := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unblock) // before the worker stops, should the case fail
	id := d.enqueue("long", stem.EnqueueOptions{})
	d.waitState(id, stemtype.StateStarted)
	// Another consumer keeps trying to claim for several lease periods.
	for deadline := time.Now().Add(2500 * time.Millisecond); time.Now().Before(deadline); {
		ds, err := d.roles.Broker.Claim(context.Background(), stemdriver.ClaimRequest{Queues: []string{stemtype.DefaultQueue},
			Consumer: "thief", Max: 1, Lease: time.Second, Wait: 50 * time.Millisecond})
		if err != nil || len(ds) != 0 {
			t.Fatalf("renewed task was claimed by another consumer: %v %v", ds, err)
		}
	}
	unblock()
	if res := d.wait(id); res.State != stemtype.StateSucceeded || runs.Load() != 1 {
		t.Fatalf("got %+v after %d runs", res, runs.Load())
	}
}

// ExtendLease never shortens a task's lease: a task of a worker with a
// 30 s lease that asks for a millisecond keeps its 30 s, and another
// consumer claims nothing while it runs.
func testExtendLeaseNeverShortensTheLease(t *testing.T, h Harness) {
	d := open(t, h)
	extended := make(chan error, 1)
	release := make(chan struct{})
	stem.Register(d.reg, "short-ask", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		extended <- tc.ExtendLease(time.Millisecond)
		<-release
		return "done", nil
	}, stem.TaskOptions{})
	d.startWorker(stem.WorkerConfig{Lease: 30 * time.Second})
	unblock := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unblock) // before the worker stops, should the case fail
	id := d.enqueue("short-ask", stem.EnqueueOptions{})
	if err := await(t, extended, "the task extends its lease"); err != nil {
		t.Fatalf("ExtendLease: %v", err)
	}
	for range 5 {
		ds, err := d.roles.Broker.Claim(context.Background(), stemdriver.ClaimRequest{Queues: []string{stemtype.DefaultQueue},
			Consumer: "thief", Max: 1, Lease: time.Second, Wait: 20 * time.Millisecond})
		if err != nil || len(ds) != 0 {
			t.Fatalf("another consumer claimed the running task: %v %v", ds, err)
		}
	}
	unblock()
	if r := d.wait(id); r.State != stemtype.StateSucceeded {
		t.Fatalf("got %+v", r)
	}
}

// onMessage is a slog handler that calls on with every record's message
// (and drops the records): a test's window on a worker's log.
type onMessage func(msg string)

func (h onMessage) Enabled(context.Context, slog.Level) bool { return true }
func (h onMessage) Handle(_ context.Context, r slog.Record) error {
	h(r.Message)
	return nil
}
func (h onMessage) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h onMessage) WithGroup(string) slog.Handler      { return h }

// A task running when its worker shuts down finishes within the grace
// period, its context not cancelled: its outcome is recorded and its
// delivery acknowledged before Run returns.
func testGracefulShutdownFinishesInflightTask(t *testing.T, h Harness) {
	d := open(t, h)
	started := make(chan struct{})
	shuttingDown := make(chan struct{})
	closeOnce := sync.OnceFunc(func() { close(shuttingDown) })
	t.Cleanup(closeOnce) // should the worker never log it
	log := slog.New(onMessage(func(msg string) {
		if strings.Contains(msg, "shutting down") {
			closeOnce()
		}
	}))
	stem.Register(d.reg, "finishing", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		close(started)
		<-shuttingDown // the task's work outlives the shutdown signal
		return "finished", tc.Err()
	}, stem.TaskOptions{})
	_, stop := d.startWorker(stem.WorkerConfig{ShutdownTimeout: waitBound, Logger: log})
	id := d.enqueue("finishing", stem.EnqueueOptions{})
	await(t, started, "the task starts")
	stop() // returns only after Run returned
	res, err := d.roles.Results.Get(context.Background(), id)
	if err != nil || res.State != stemtype.StateSucceeded || string(res.Result) != `"finished"` {
		t.Fatalf("after shutdown: %+v %v", res, err)
	}
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("depth %d after a finished task", n)
	}
}

// A task still running when the grace period is over sees its context
// cancelled with cause stem.ErrWorkerShutdown and is released, not
// failed: nothing is lost, another worker runs it on the same attempt.
func testShutdownPastGraceReleasesTaskToAnotherWorker(t *testing.T, h Harness) {
	d := open(t, h)
	first := make(chan struct{})
	var runs atomic.Int32
	stem.Register(d.reg, "stubborn", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
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
	_, stop := d.startWorker(stem.WorkerConfig{ID: "w1", ShutdownTimeout: 50 * time.Millisecond})
	id := d.enqueue("stubborn", stem.EnqueueOptions{})
	await(t, first, "the task starts")
	stop()
	// Released, not failed: nothing lost, and another worker runs it.
	if n := d.depth(stemtype.DefaultQueue); n != 1 {
		t.Fatalf("depth %d after shutdown, want the task released (1)", n)
	}
	d.startWorker(stem.WorkerConfig{ID: "w2"})
	res := d.wait(id)
	if res.State != stemtype.StateSucceeded || res.WorkerID != "w2" || res.Attempt != 0 || string(res.Result) != `"second run"` {
		t.Fatalf("got %+v", res)
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("ran %d times, want 2 (once per worker)", n)
	}
}

// gatedRelease holds its first Release until gate is closed (or its
// context ends), reporting meanwhile in pending that it is under way.
type gatedRelease struct {
	stemdriver.Broker
	once    sync.Once
	gate    chan struct{}
	pending atomic.Bool
}

func (b *gatedRelease) Release(ctx context.Context, ds ...stemdriver.Delivery) error {
	first := false
	b.once.Do(func() { first = true })
	if first {
		b.pending.Store(true)
		defer b.pending.Store(false)
		select {
		case <-b.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return b.Broker.Release(ctx, ds...)
}

// withdrawWatch runs onWithdraw when the worker withdraws its presence,
// the last thing Run does.
type withdrawWatch struct {
	stemdriver.ControlTransport
	onWithdraw func()
}

func (c *withdrawWatch) Withdraw(ctx context.Context, id, instance string) error {
	c.onWithdraw()
	return c.ControlTransport.Withdraw(ctx, id, instance)
}

// A task's release at shutdown that is still under way when the grace
// periods are over (its runner settled it, outside the result writer,
// and the broker is slow to answer) is waited for before Run returns: a
// process exits once Run returned, and the task would then wait out its
// whole lease instead of going back at once.
func testRunWaitsForReleaseUnderWay(t *testing.T, h Harness) {
	d := open(t, h)
	running := make(chan struct{})
	stem.Register(d.reg, "polite", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		close(running)
		<-tc.Done()
		return nil, context.Cause(tc)
	}, stem.TaskOptions{})
	id := d.enqueue("polite", stem.EnqueueOptions{})
	b := &gatedRelease{Broker: d.roles.Broker, gate: make(chan struct{})}
	openGate := sync.OnceFunc(func() { close(b.gate) })
	var returnedEarly atomic.Bool
	ctl := &withdrawWatch{ControlTransport: d.roles.Control, onWithdraw: func() {
		returnedEarly.Store(b.pending.Load())
		openGate()
	}}
	log := slog.New(onMessage(func(msg string) {
		if strings.Contains(msg, "waiting for task releases under way") {
			openGate()
		}
	}))
	_, stop := d.startWorker(stem.WorkerConfig{Broker: b, Control: ctl, Logger: log, Lease: 30 * time.Second,
		ShutdownTimeout: 20 * time.Millisecond})
	await(t, running, "the task runs")
	stop()
	if returnedEarly.Load() {
		t.Fatal("Run returned while the release of its task was still under way")
	}
	ds, err := d.roles.Broker.Claim(context.Background(), stemdriver.ClaimRequest{Queues: []string{stemtype.DefaultQueue},
		Consumer: "next", Max: 1, Lease: time.Second, Wait: time.Second})
	if err != nil || len(ds) != 1 || ds[0].Envelope == nil || ds[0].Envelope.ID != id {
		t.Fatalf("the task is not claimable right after Run returned: %v %v", ds, err)
	}
}

// errSevered is what a severed driver returns once cut.
var errSevered = errors.New("connection refused: the server is gone")

// severedBroker fails every call once cut is set, as a broker whose
// server a worker can no longer reach (a partition, a dead host's
// sockets).
type severedBroker struct {
	stemdriver.Broker
	cut *atomic.Bool
}

func (b severedBroker) Claim(ctx context.Context, req stemdriver.ClaimRequest) ([]stemdriver.Delivery, error) {
	if b.cut.Load() {
		return nil, errSevered
	}
	return b.Broker.Claim(ctx, req)
}

func (b severedBroker) ExtendLease(ctx context.Context, d stemdriver.Delivery, l time.Duration) error {
	if b.cut.Load() {
		return errSevered
	}
	return b.Broker.ExtendLease(ctx, d, l)
}

func (b severedBroker) Ack(ctx context.Context, ds ...stemdriver.Delivery) error {
	if b.cut.Load() {
		return errSevered
	}
	return b.Broker.Ack(ctx, ds...)
}

func (b severedBroker) Retry(ctx context.Context, d stemdriver.Delivery, next *stemtype.Envelope) error {
	if b.cut.Load() {
		return errSevered
	}
	return b.Broker.Retry(ctx, d, next)
}

func (b severedBroker) Release(ctx context.Context, ds ...stemdriver.Delivery) error {
	if b.cut.Load() {
		return errSevered
	}
	return b.Broker.Release(ctx, ds...)
}

func (b severedBroker) DeadLetter(ctx context.Context, d stemdriver.Delivery, reason string) error {
	if b.cut.Load() {
		return errSevered
	}
	return b.Broker.DeadLetter(ctx, d, reason)
}

// severedResults fails every write and read once cut is set.
type severedResults struct {
	stemdriver.ResultBackend
	cut *atomic.Bool
}

func (r severedResults) Put(ctx context.Context, rs ...*stemtype.TaskResult) error {
	if r.cut.Load() {
		return errSevered
	}
	return r.ResultBackend.Put(ctx, rs...)
}

func (r severedResults) Get(ctx context.Context, id string) (*stemtype.TaskResult, error) {
	if r.cut.Load() {
		return nil, errSevered
	}
	return r.ResultBackend.Get(ctx, id)
}

func (r severedResults) GetMany(ctx context.Context, ids ...string) ([]*stemtype.TaskResult, error) {
	if r.cut.Load() {
		return nil, errSevered
	}
	return r.ResultBackend.GetMany(ctx, ids...)
}

// A real worker cut off from its broker and result backend while it runs
// a task (it can neither renew, acknowledge, release nor record anything,
// as a worker on a host that died or was partitioned away) loses the task
// once its lease expires: another worker finishes it, and the cut-off
// worker's late outcome, when its handler returns at last, replaces
// nothing.
func testCutOffWorkerLosesItsTask(t *testing.T, h Harness) {
	d := open(t, h)
	firstRunning := make(chan struct{})
	release := make(chan struct{})
	var runs atomic.Int32
	stem.Register(d.reg, "work", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		if runs.Add(1) == 1 {
			close(firstRunning)
			<-release // ignores its context: the cut-off worker's handler runs on
			return "late", nil
		}
		return "done", nil
	}, stem.TaskOptions{})
	var cut atomic.Bool
	_, stop1 := d.startWorker(stem.WorkerConfig{ID: "cut-off", Concurrency: 1, Prefetch: 1,
		Broker: severedBroker{d.roles.Broker, &cut}, Results: severedResults{d.roles.Results, &cut},
		Lease: h.Capabilities.ShortLease, ShutdownTimeout: 10 * time.Millisecond})
	unblock := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unblock) // before the worker stops, should the case fail
	id := d.enqueue("work", stem.EnqueueOptions{})
	await(t, firstRunning, "the task runs on the first worker")
	d.waitState(id, stemtype.StateStarted) // recorded before the cut
	cut.Store(true)
	d.startWorker(stem.WorkerConfig{ID: "alive"})
	res := d.wait(id)
	if res.State != stemtype.StateSucceeded || string(res.Result) != `"done"` || res.WorkerID != "alive" {
		t.Fatalf("got %+v, want the task finished by the live worker", res)
	}
	unblock()
	stop1() // Run returns however its last calls fail
	if r, err := d.roles.Results.Get(context.Background(), id); err != nil || r.State != stemtype.StateSucceeded ||
		string(r.Result) != `"done"` || r.WorkerID != "alive" {
		t.Fatalf("after the cut-off worker stopped: %+v %v, want the live worker's outcome", r, err)
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("ran %d times, want 2 (once per worker)", n)
	}
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("queue depth %d, want 0: the live worker acknowledged the task", n)
	}
}
