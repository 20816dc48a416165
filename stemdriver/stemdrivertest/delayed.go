package stemdrivertest

import (
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// testBrokerDelayedLists: a broker that implements stemdriver.DelayedLister
// lists the delayed messages of a queue, soonest first, up to the limit,
// with the count of them all; ready messages and other queues are not
// listed, and listing takes nothing away. Brokers without it skip.
func testBrokerDelayedLists(t *testing.T, open opener[stemdriver.Broker], ns string) {
	ctx := testContext(t)
	b := open(t, ns)
	dl, ok := b.(stemdriver.DelayedLister)
	if !ok {
		t.Skipf("%T does not implement stemdriver.DelayedLister", b)
	}
	base := now().Add(time.Hour)
	late, soon, mid := envelopes("late", "q", 1)[0], envelopes("soon", "q", 1)[0], envelopes("mid", "q", 1)[0]
	late.NotBefore, soon.NotBefore, mid.NotBefore = base.Add(2*time.Minute), base, base.Add(time.Minute)
	ready := envelopes("ready", "q", 1)[0]
	other := envelopes("other", "q2", 1)[0]
	other.NotBefore = base
	mustPublish(ctx, t, b, late, soon, ready, mid, other)

	envs, total, err := dl.Delayed(ctx, "q", 2)
	if err != nil {
		t.Fatalf("Delayed: %v", err)
	}
	if total != 3 || len(envs) != 2 || envs[0].ID != soon.ID || envs[1].ID != mid.ID {
		t.Fatalf("Delayed(q, 2) = %v, %d; want [%s %s], 3", ids(envs), total, soon.ID, mid.ID)
	}
	if !envs[0].NotBefore.Equal(soon.NotBefore.Truncate(time.Microsecond)) && !envs[0].NotBefore.Equal(soon.NotBefore) {
		t.Errorf("listed NotBefore %v, published %v", envs[0].NotBefore, soon.NotBefore)
	}
	envs, total, err = dl.Delayed(ctx, "q", 10)
	if err != nil || total != 3 || len(envs) != 3 || envs[2].ID != late.ID {
		t.Fatalf("Delayed(q, 10) = %v, %d, %v; want 3, ending with %s", ids(envs), total, err, late.ID)
	}
	envs, total, err = dl.Delayed(ctx, "empty", 10)
	if err != nil || total != 0 || len(envs) != 0 {
		t.Fatalf("Delayed of an empty queue = %v, %d, %v", ids(envs), total, err)
	}
	mustDepth(ctx, t, b, "q", 4)
	ds := claimN(ctx, t, b, 1, req("c1", longLease, "q"))
	if ds[0].Envelope == nil || ds[0].Envelope.ID != ready.ID {
		t.Fatalf("claimed %+v, want the ready message %s", ds[0], ready.ID)
	}
}

func ids(envs []*stemtype.Envelope) []string {
	out := make([]string, len(envs))
	for i, e := range envs {
		out[i] = e.ID
	}
	return out
}
