package settle_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/stem-go/stem/internal/settle"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// acker is a memory broker that acknowledges with its results: PutAck
// puts, then acks (not atomic, which these tests do not need), or fails
// with err when set. It counts its calls, and plain Acks.
type acker struct {
	stemdriver.Broker
	results       stemdriver.ResultBackend
	err           error
	putAcks, acks atomic.Int64
}

func (a *acker) AcksWith(rb stemdriver.ResultBackend) bool { return rb == a.results }

func (a *acker) PutAck(ctx context.Context, rb stemdriver.ResultBackend, rs []*stemtype.TaskResult, ds []stemdriver.Delivery) error {
	a.putAcks.Add(1)
	if a.err != nil {
		return a.err
	}
	if err := rb.Put(ctx, rs...); err != nil {
		return err
	}
	return a.Broker.Ack(ctx, ds...)
}

func (a *acker) Ack(ctx context.Context, ds ...stemdriver.Delivery) error {
	a.acks.Add(1)
	return a.Broker.Ack(ctx, ds...)
}

// With a broker that acknowledges with the results, a batch's outcomes and
// acks go in PutAck calls, never in a Put and an Ack.
func TestOutcomesGoInPutAck(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a := &acker{Broker: e.broker, results: e.results}
	w, _ := e.writer(a, e.results)
	ds := e.claim(40)
	for _, d := range ds {
		w.Queue(settle.Settlement{Delivery: d, Result: result(d.Envelope.ID, stemtype.StateSucceeded), Op: settle.Ack})
	}
	w.Close(ctx)
	if a.putAcks.Load() == 0 || a.acks.Load() != 0 {
		t.Fatalf("%d PutAck calls and %d plain Acks, want PutAck calls alone", a.putAcks.Load(), a.acks.Load())
	}
	for _, d := range ds {
		if r, err := e.results.Get(ctx, d.Envelope.ID); err != nil || r.State != stemtype.StateSucceeded {
			t.Fatalf("task %s: %+v %v, want succeeded", d.Envelope.ID, r, err)
		}
		if e.held(d) {
			t.Fatalf("task %s not acknowledged", d.Envelope.ID)
		}
	}
}

// A PutAck that keeps failing records nothing and acknowledges nothing:
// the tasks are left to their leases and counted given up; a delivery of
// the batch whose settlement records no result is acknowledged alone.
func TestFailedPutAckLeavesTasksToLeases(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a := &acker{Broker: e.broker, results: e.results, err: errors.New("down")}
	w := settle.New(settle.Config{Broker: a, Results: e.results, Logger: quiet(), GiveUpAfter: 1})
	ds := e.claim(2)
	w.Queue(settle.Settlement{Delivery: ds[0], Result: result(ds[0].Envelope.ID, stemtype.StateSucceeded), Op: settle.Ack})
	w.Queue(settle.Settlement{Delivery: ds[1], Op: settle.Ack}) // found finished already: no result of its own
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	ran := make(chan struct{})
	go func() { w.Run(runCtx); close(ran) }()
	w.Close(ctx)
	<-ran
	if !e.held(ds[0]) {
		t.Fatal("a task whose outcome was never recorded was acknowledged")
	}
	if r, err := e.results.Get(ctx, ds[0].Envelope.ID); !errors.Is(err, stemdriver.ErrNotFound) {
		t.Fatalf("result written by a failed PutAck: %+v %v", r, err)
	}
	if e.held(ds[1]) || a.acks.Load() == 0 {
		t.Fatalf("the delivery without a result was not acknowledged by a plain Ack (%d Acks)", a.acks.Load())
	}
	if g := w.GaveUp(); g != 1 {
		t.Fatalf("GaveUp = %d, want 1 (the unrecorded task)", g)
	}
}
