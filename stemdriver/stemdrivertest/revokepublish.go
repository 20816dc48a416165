package stemdrivertest

import (
	"fmt"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// revokePair is a control transport and a revoke store of one deployment,
// for the stemdriver.RevokePublisher properties.
type revokePair struct {
	c  stemdriver.ControlTransport
	rp stemdriver.RevokePublisher // c, when it is one
	rs stemdriver.RevokeStore
	ns string
}

// runRevokePublish runs the stemdriver.RevokePublisher properties
// (Capabilities.RevokePublish).
func runRevokePublish(t *testing.T, h Harness) {
	t.Helper()
	open := func(t *testing.T, ns string) revokePair {
		c, rs := h.Control(t, ns), h.Revokes(t, ns)
		rp, _ := c.(stemdriver.RevokePublisher)
		return revokePair{c, rp, rs, ns}
	}
	has := func(p revokePair) (bool, string) {
		return p.rp != nil && p.rp.PublishesWith(p.rs), fmt.Sprintf("%T implements stemdriver.RevokePublisher with PublishesWith(%T) true", p.c, p.rs)
	}
	runPaired(t, "RevokePublish", h.Capabilities.RevokePublish, open, has, []pairedProperty[revokePair]{
		{"StoresAndPublishes", testRevokePublishStoresAndPublishes},
		{"NoPublishWhenStoreAssignsOtherVersions", testRevokePublishWithheld},
		{"OneRecordStoredAndPublished", testRevokePublishOne},
		{"OneRecordWithheld", testRevokePublishOneWithheld},
		{"PrunedRecordWithheld", testRevokePublishPrunedWithheld},
	})
}

// Records stored with the versions they propose: stored, returned as
// stored, and the message published to its targets (and no other).
func testRevokePublishStoresAndPublishes(t *testing.T, p revokePair) {
	c, rp, rs, ns := p.c, p.rp, p.rs, p.ns
	ctx := testContext(t)
	w1, w2 := mustSubscribe(ctx, t, c, "w1"), mustSubscribe(ctx, t, c, "w2")
	recs := []stemtype.RevokeRecord{fullRevoke(ns, "task-1", 100), fullRevoke(ns, "task-2", 101)}
	stored, published, err := rp.UpsertPublish(ctx, rs, recs, []string{"w1"}, []byte("revoke-1-2"))
	if err != nil || !published {
		t.Fatalf("UpsertPublish = %v, %v; want published", published, err)
	}
	assertEqual(t, "stored records", normRevokes(stored), normRevokes(recs))
	assertEqual(t, "listed records", normRevokes(mustList(ctx, t, rs, ns)), normRevokes(recs))
	mustPublishControl(ctx, t, c, nil, "fence")
	assertEqual(t, "messages to w1", recvUntil(ctx, t, w1, "fence"), []string{"revoke-1-2"})
	assertEqual(t, "messages to w2", recvUntil(ctx, t, w2, "fence"), []string(nil))
}

// A record the store assigns another version (a later revoke of the task
// is stored already) withholds the message, which would carry the wrong
// version; the records are stored as Upsert would store them.
func testRevokePublishWithheld(t *testing.T, p revokePair) {
	c, rp, rs, ns := p.c, p.rp, p.rs, p.ns
	ctx := testContext(t)
	w1 := mustSubscribe(ctx, t, c, "w1")
	held := fullRevoke(ns, "task-1", 500)
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{held}, []stemtype.RevokeRecord{held})
	recs := []stemtype.RevokeRecord{fullRevoke(ns, "task-1", 100), fullRevoke(ns, "task-2", 101)}
	stored, published, err := rp.UpsertPublish(ctx, rs, recs, nil, []byte("stale"))
	if err != nil || published {
		t.Fatalf("UpsertPublish = %v, %v; want not published", published, err)
	}
	want := []stemtype.RevokeRecord{withVersion(recs[0], 501), recs[1]}
	assertEqual(t, "stored records", normRevokes(stored), normRevokes(want))
	mustPublishControl(ctx, t, c, nil, "fence")
	assertEqual(t, "messages to w1", recvUntil(ctx, t, w1, "fence"), []string(nil))
}

// One record (the usual revoke) is stored and published like several.
func testRevokePublishOne(t *testing.T, p revokePair) {
	c, rp, rs, ns := p.c, p.rp, p.rs, p.ns
	ctx := testContext(t)
	w1 := mustSubscribe(ctx, t, c, "w1")
	rec := fullRevoke(ns, "task-1", 100)
	stored, published, err := rp.UpsertPublish(ctx, rs, []stemtype.RevokeRecord{rec}, nil, []byte("one"))
	if err != nil || !published {
		t.Fatalf("UpsertPublish = %v, %v; want published", published, err)
	}
	assertEqual(t, "stored records", normRevokes(stored), normRevokes([]stemtype.RevokeRecord{rec}))
	mustPublishControl(ctx, t, c, nil, "fence")
	assertEqual(t, "messages to w1", recvUntil(ctx, t, w1, "fence"), []string{"one"})
}

// One record the store assigns another version withholds the message.
func testRevokePublishOneWithheld(t *testing.T, p revokePair) {
	c, rp, rs, ns := p.c, p.rp, p.rs, p.ns
	ctx := testContext(t)
	w1 := mustSubscribe(ctx, t, c, "w1")
	held := fullRevoke(ns, "task-1", 500)
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{held}, []stemtype.RevokeRecord{held})
	rec := fullRevoke(ns, "task-1", 100)
	stored, published, err := rp.UpsertPublish(ctx, rs, []stemtype.RevokeRecord{rec}, nil, []byte("stale"))
	if err != nil || published {
		t.Fatalf("UpsertPublish = %v, %v; want not published", published, err)
	}
	assertEqual(t, "stored records", normRevokes(stored), normRevokes([]stemtype.RevokeRecord{withVersion(rec, 501)}))
	mustPublishControl(ctx, t, c, nil, "fence")
	assertEqual(t, "messages to w1", recvUntil(ctx, t, w1, "fence"), []string(nil))
}

// A late record of a pruned task, one or among several, is not stored
// (Version 0) and withholds the message, which would carry it; the other
// records are stored.
func testRevokePublishPrunedWithheld(t *testing.T, p revokePair) {
	c, rp, rs, ns := p.c, p.rp, p.rs, p.ns
	ctx := testContext(t)
	w1 := mustSubscribe(ctx, t, c, "w1")
	pruned := fullRevoke(ns, "task-1", 500)
	pruned.ExpiresAt = now().Add(-time.Hour)
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{pruned}, []stemtype.RevokeRecord{pruned})
	if n, err := rs.Prune(ctx, ns, now()); err != nil || n != 1 {
		t.Fatalf("Prune = (%d, %v), want (1, nil)", n, err)
	}
	late, other := fullRevoke(ns, "task-1", 100), fullRevoke(ns, "task-2", 101)
	for _, recs := range [][]stemtype.RevokeRecord{{late}, {late, other}} {
		stored, published, err := rp.UpsertPublish(ctx, rs, recs, nil, []byte("late"))
		if err != nil || published {
			t.Fatalf("UpsertPublish of %d records = %v, %v; want not published", len(recs), published, err)
		}
		want := append([]stemtype.RevokeRecord{withVersion(late, 0)}, recs[1:]...)
		assertEqual(t, "stored records", normRevokes(stored), normRevokes(want))
	}
	assertEqual(t, "listed records", mustList(ctx, t, rs, ns), normRevokes([]stemtype.RevokeRecord{other}))
	mustPublishControl(ctx, t, c, nil, "fence")
	assertEqual(t, "messages to w1", recvUntil(ctx, t, w1, "fence"), []string(nil))
}
