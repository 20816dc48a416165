package stemdrivertest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// ackPair is a broker and a result backend of one deployment, for the
// stemdriver.ResultAcker properties.
type ackPair struct {
	b  stemdriver.Broker
	ra stemdriver.ResultAcker // b, when it is one
	rb stemdriver.ResultBackend
}

// runPutAck runs the stemdriver.ResultAcker properties (Capabilities.PutAck).
func runPutAck(t *testing.T, h Harness) {
	t.Helper()
	open := func(t *testing.T, ns string) ackPair {
		b, rb := h.Broker(t, ns), h.Results(t, ns)
		ra, _ := b.(stemdriver.ResultAcker)
		return ackPair{b, ra, rb}
	}
	has := func(p ackPair) (bool, string) {
		return p.ra != nil && p.ra.AcksWith(p.rb), fmt.Sprintf("%T implements stemdriver.ResultAcker with AcksWith(%T) true", p.b, p.rb)
	}
	runPaired(t, "PutAck", h.Capabilities.PutAck, open, has, []pairedProperty[ackPair]{
		{"WritesAndAcks", testPutAckWritesAndAcks},
		{"LostLeaseReportedRestApplied", testPutAckLostLease},
		{"FinalStatesStayFinal", testPutAckFinalStaysFinal},
		{"NothingOnError", testPutAckNothingOnError},
	})
}

// outcome returns a succeeded result of d's task.
func outcome(d stemdriver.Delivery, value string) *stemtype.TaskResult {
	tm := now()
	return &stemtype.TaskResult{ID: d.Envelope.ID, Task: d.Envelope.Task, Queue: d.Queue, State: stemtype.StateSucceeded,
		Result: []byte(value), StartedAt: tm, FinishedAt: tm, UpdatedAt: tm}
}

// held reports whether d is still leased to its claim.
func stillHeld(t *testing.T, b stemdriver.Broker, d stemdriver.Delivery) bool {
	t.Helper()
	err := b.ExtendLease(testContext(t), d, time.Minute)
	if err != nil && !errors.Is(err, stemdriver.ErrLeaseLost) {
		t.Fatalf("ExtendLease: %v", err)
	}
	return err == nil
}

// PutAck records every result and acknowledges every delivery: the results
// read back, and no delivery is held or claimed again.
func testPutAckWritesAndAcks(t *testing.T, p ackPair) {
	b, ra, rb := p.b, p.ra, p.rb
	ctx := testContext(t)
	mustPublish(ctx, t, b, envelopes("pa", "q", 3)...)
	ds := claimN(ctx, t, b, 3, req("c", longLease, "q"))
	rs := make([]*stemtype.TaskResult, len(ds))
	for i, d := range ds {
		rs[i] = outcome(d, `"done"`)
	}
	if err := ra.PutAck(ctx, rb, rs, ds); err != nil {
		t.Fatalf("PutAck: %v", err)
	}
	for _, d := range ds {
		r, err := rb.Get(ctx, d.Envelope.ID)
		if err != nil || r.State != stemtype.StateSucceeded || string(canonJSON(r.Result)) != `"done"` {
			t.Fatalf("result of %s after PutAck: %+v %v, want succeeded \"done\"", d.Envelope.ID, r, err)
		}
		if stillHeld(t, b, d) {
			t.Fatalf("delivery of %s still held after PutAck", d.Envelope.ID)
		}
	}
	mustClaimNone(ctx, t, b, req("c2", shortLease, "q"), 2*shortLease)
}

// A delivery no longer held is reported (ErrLeaseLost) and left alone; the
// results, and the other acknowledgements, are applied all the same.
func testPutAckLostLease(t *testing.T, p ackPair) {
	b, ra, rb := p.b, p.ra, p.rb
	ctx := testContext(t)
	mustPublish(ctx, t, b, envelopes("pl", "q", 2)...)
	ds := claimN(ctx, t, b, 2, req("c", longLease, "q"))
	if err := b.Ack(ctx, ds[0]); err != nil {
		t.Fatal(err)
	}
	rs := []*stemtype.TaskResult{outcome(ds[0], `1`), outcome(ds[1], `2`)}
	if err := ra.PutAck(ctx, rb, rs, ds); !errors.Is(err, stemdriver.ErrLeaseLost) {
		t.Fatalf("PutAck with an acked delivery = %v, want ErrLeaseLost", err)
	}
	for _, r := range rs {
		got, err := rb.Get(ctx, r.ID)
		if err != nil || got.State != stemtype.StateSucceeded {
			t.Fatalf("result of %s: %+v %v, want it written despite the lost lease", r.ID, got, err)
		}
	}
	if stillHeld(t, b, ds[1]) {
		t.Fatal("the held delivery was not acknowledged beside the lost one")
	}
}

// A stored final state is final under PutAck as under Put; the delivery
// is acknowledged all the same.
func testPutAckFinalStaysFinal(t *testing.T, p ackPair) {
	b, ra, rb := p.b, p.ra, p.rb
	ctx := testContext(t)
	mustPublish(ctx, t, b, envelopes("pf", "q", 1)...)
	ds := claimN(ctx, t, b, 1, req("c", longLease, "q"))
	first := outcome(ds[0], `"first"`)
	if err := rb.Put(ctx, first); err != nil {
		t.Fatal(err)
	}
	late := outcome(ds[0], `"late"`)
	late.State = stemtype.StateStarted
	if err := ra.PutAck(ctx, rb, []*stemtype.TaskResult{late}, ds); err != nil {
		t.Fatalf("PutAck: %v", err)
	}
	if r, err := rb.Get(ctx, first.ID); err != nil || r.State != stemtype.StateSucceeded || string(canonJSON(r.Result)) != `"first"` {
		t.Fatalf("stored %+v %v, want the first final state kept", r, err)
	}
	if stillHeld(t, b, ds[0]) {
		t.Fatal("delivery still held after PutAck")
	}
}

// A PutAck that fails (here: a result the backend refuses) changes
// nothing: no result is written and the deliveries stay held.
func testPutAckNothingOnError(t *testing.T, p ackPair) {
	b, ra, rb := p.b, p.ra, p.rb
	ctx := testContext(t)
	mustPublish(ctx, t, b, envelopes("pe", "q", 2)...)
	ds := claimN(ctx, t, b, 2, req("c", longLease, "q"))
	bad := outcome(ds[1], `"x"`)
	bad.ID = "" // no backend stores a result without an id
	if err := ra.PutAck(ctx, rb, []*stemtype.TaskResult{outcome(ds[0], `"ok"`), bad}, ds); err == nil || errors.Is(err, stemdriver.ErrLeaseLost) {
		t.Fatalf("PutAck with a result without an id = %v, want an error", err)
	}
	if r, err := rb.Get(ctx, ds[0].Envelope.ID); !errors.Is(err, stemdriver.ErrNotFound) {
		t.Fatalf("result of %s after a failed PutAck: %+v %v, want none", ds[0].Envelope.ID, r, err)
	}
	for _, d := range ds {
		if !stillHeld(t, b, d) {
			t.Fatalf("delivery of %s not held after a failed PutAck", d.Envelope.ID)
		}
	}
}
