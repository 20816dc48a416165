package settle_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem/internal/settle"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// switchable is the real memory result backend whose Put fails while
// down is set.
type switchable struct {
	stemdriver.ResultBackend
	down atomic.Bool
	puts atomic.Int64
}

func (r *switchable) Put(ctx context.Context, rs ...*stemtype.TaskResult) error {
	r.puts.Add(1)
	if r.down.Load() {
		return errors.New("injected: result backend down")
	}
	return r.ResultBackend.Put(ctx, rs...)
}

// runningWriter runs a writer over broker and results that gives up on a
// failing write after giveUp, and reports each Done on the returned
// channel. It is closed when the test ends.
func runningWriter(t *testing.T, broker stemdriver.Broker, results stemdriver.ResultBackend,
	giveUp time.Duration) (*settle.Writer, <-chan *stemdriver.Delivery) {
	done := make(chan *stemdriver.Delivery, 16)
	w := settle.New(settle.Config{Broker: broker, Results: results, Logger: quiet(), GiveUpAfter: giveUp,
		Done: func(d *stemdriver.Delivery) { done <- d }})
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { w.Run(ctx); close(ran) }()
	t.Cleanup(func() {
		w.Close(context.Background())
		cancel()
		<-ran
	})
	return w, done
}

// awaitDone waits for Done of d; the deadline is a failure bound only.
func awaitDone(t *testing.T, done <-chan *stemdriver.Delivery, d *stemdriver.Delivery) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case got := <-done:
			if got == d {
				return
			}
		case <-deadline:
			t.Fatalf("the writer never finished with %s: a failing result backend stalls it for ever", d.Envelope.ID)
		}
	}
}

// A result backend that keeps failing does not hold a running writer for
// ever: after GiveUpAfter the writer gives up on the batch, leaves its
// deliveries to their leases (not acked, Done called, so the worker stops
// renewing them and another claim runs the task), and goes on. While the
// backend stays down, later batches are tried once, not for another
// GiveUpAfter each; once it is back, writes and acks resume.
func TestPermanentWriteFailureGivesUp(t *testing.T) {
	e := newEnv(t)
	ds := e.claim(3)
	res := &switchable{ResultBackend: e.results}
	res.down.Store(true)
	w, done := runningWriter(t, e.broker, res, 100*time.Millisecond)

	w.Queue(settle.Settlement{Delivery: ds[0], Result: result(ds[0].Envelope.ID, stemtype.StateSucceeded), Op: settle.Ack})
	awaitDone(t, done, ds[0])
	if !e.held(ds[0]) {
		t.Fatal("a delivery was acked although its result was never written")
	}
	if n := res.puts.Load(); n < 2 {
		t.Fatalf("the write was tried %d times before giving up, want it retried", n)
	}

	before := res.puts.Load()
	w.Queue(settle.Settlement{Delivery: ds[1], Result: result(ds[1].Envelope.ID, stemtype.StateSucceeded), Op: settle.Ack})
	awaitDone(t, done, ds[1])
	if n := res.puts.Load() - before; n != 1 {
		t.Fatalf("with the backend still down a later batch was tried %d times, want 1", n)
	}
	if !e.held(ds[1]) {
		t.Fatal("a delivery was acked although its result was never written")
	}

	res.down.Store(false)
	w.Queue(settle.Settlement{Delivery: ds[2], Result: result(ds[2].Envelope.ID, stemtype.StateSucceeded), Op: settle.Ack})
	awaitDone(t, done, ds[2])
	if e.held(ds[2]) {
		t.Fatal("once the backend was back the outcome was not acknowledged")
	}
	if r, err := e.results.Get(context.Background(), ds[2].Envelope.ID); err != nil || r.State != stemtype.StateSucceeded {
		t.Fatalf("stored %+v (%v), want succeeded", r, err)
	}
	if w.GaveUp() != 2 {
		t.Fatalf("GaveUp() = %d, want 2 settlements given up", w.GaveUp())
	}
}

// failingAcks is the real memory broker whose Ack always fails.
type failingAcks struct {
	stemdriver.Broker
	calls atomic.Int64
}

func (b *failingAcks) Ack(context.Context, ...stemdriver.Delivery) error {
	b.calls.Add(1)
	return errors.New("injected: broker refuses acks")
}

// A broker whose Ack keeps failing does not hold a running writer for ever
// either: the outcome is recorded, the delivery left to its lease (its
// redelivery finds the task final and is acknowledged without running).
func TestPermanentAckFailureGivesUp(t *testing.T) {
	e := newEnv(t)
	ds := e.claim(1)
	b := &failingAcks{Broker: e.broker}
	w, done := runningWriter(t, b, e.results, 100*time.Millisecond)
	w.Queue(settle.Settlement{Delivery: ds[0], Result: result(ds[0].Envelope.ID, stemtype.StateSucceeded), Op: settle.Ack})
	awaitDone(t, done, ds[0])
	if b.calls.Load() < 2 {
		t.Fatalf("the ack was tried %d times before giving up, want it retried", b.calls.Load())
	}
	if r, err := e.results.Get(context.Background(), ds[0].Envelope.ID); err != nil || r.State != stemtype.StateSucceeded {
		t.Fatalf("stored %+v (%v), want succeeded", r, err)
	}
	if !e.held(ds[0]) {
		t.Fatal("the delivery was settled although every ack failed")
	}
}

// Offer never waits: with the result backend hung and the shard's queue
// full, a progress write is dropped and Offer returns at once; a
// settlement with a delivery is still queued, never dropped.
func TestOfferDropsWhenFull(t *testing.T) {
	e := newEnv(t)
	ds := e.claim(1)
	res := &hangingResults{ResultBackend: e.results, entered: make(chan struct{})}
	w, cancelRun := e.writer(nil, res)
	id := ds[0].Envelope.ID
	if !w.Offer(settle.Settlement{Result: result(id, stemtype.StateStarted)}) {
		t.Fatal("a write was dropped with the queue empty")
	}
	<-res.entered // the shard is stuck in Put from now on
	dropped := false
	for range 5000 { // more than a shard queues
		if !w.Offer(settle.Settlement{Result: result(id, stemtype.StateStarted)}) {
			dropped = true
			break
		}
	}
	if !dropped {
		t.Fatal("Offer never dropped a write with the shard stuck and its queue full")
	}
	// The writer's own context ends with the final one, as in the worker:
	// the queued writes are given up at once.
	final, cancelFinal := context.WithCancel(context.Background())
	context.AfterFunc(final, cancelRun)
	cancelFinal()
	w.Close(final)
}
