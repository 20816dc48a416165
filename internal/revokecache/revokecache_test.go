package revokecache

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stem-go/stem/stemtype"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func rec(id string, version int64) stemtype.RevokeRecord {
	return stemtype.RevokeRecord{
		Namespace:   "stem",
		TaskID:      id,
		Version:     version,
		IssuedAt:    t0.Add(123456789 * time.Nanosecond),
		Terminate:   version%2 == 0,
		KillAfterMs: version * 10,
		Reason:      fmt.Sprintf("reason %d", version),
		RequestedBy: "ops",
	}
}

func expiring(id string, version int64, at time.Time) stemtype.RevokeRecord {
	r := rec(id, version)
	r.ExpiresAt = at
	return r
}

func ids(recs []stemtype.RevokeRecord) []string {
	out := make([]string, 0, len(recs))
	for _, r := range recs {
		out = append(out, fmt.Sprintf("%s@%d", r.TaskID, r.Version))
	}
	return out
}

// sameRecord reports whether a and b hold the same data, comparing times as
// instants (the cache returns them in UTC).
func sameRecord(a, b stemtype.RevokeRecord) bool {
	return a.Namespace == b.Namespace && a.TaskID == b.TaskID && a.Version == b.Version &&
		a.IssuedAt.Equal(b.IssuedAt) && a.Terminate == b.Terminate &&
		a.KillAfterMs == b.KillAfterMs && a.Reason == b.Reason &&
		a.RequestedBy == b.RequestedBy && a.ExpiresAt.Equal(b.ExpiresAt) &&
		a.ExpiresAt.IsZero() == b.ExpiresAt.IsZero()
}

func TestApplyIsMonotonic(t *testing.T) {
	c := New()
	applied, ignored, expired := c.Apply(t0, rec("a", 5), rec("b", 1), rec("a", 3), rec("a", 5), rec("a", 7))
	if got, want := ids(applied), []string{"a@5", "b@1", "a@7"}; !slices.Equal(got, want) {
		t.Errorf("applied = %v, want %v", got, want)
	}
	if got, want := ids(ignored), []string{"a@3", "a@5"}; !slices.Equal(got, want) {
		t.Errorf("ignored = %v, want %v", got, want)
	}
	if len(expired) != 0 {
		t.Errorf("expired = %v, want none", ids(expired))
	}
	got, ok := c.Lookup("a", t0)
	if !ok || !sameRecord(got, rec("a", 7)) {
		t.Fatalf("Lookup(a) = %+v, %v; want version 7", got, ok)
	}
	// A later Apply with an older version changes nothing.
	_, ignored, _ = c.Apply(t0, rec("a", 6))
	if got, want := ids(ignored), []string{"a@6"}; !slices.Equal(got, want) {
		t.Errorf("ignored = %v, want %v", got, want)
	}
	if got, _ := c.Lookup("a", t0); got.Version != 7 {
		t.Errorf("after older apply, version = %d, want 7", got.Version)
	}
	if c.Len() != 2 {
		t.Errorf("Len = %d, want 2", c.Len())
	}
}

func TestLookupRoundTripsEveryField(t *testing.T) {
	c := New()
	in := expiring("x", 8, t0.Add(time.Hour+987*time.Nanosecond))
	in.IssuedAt = in.IssuedAt.In(time.FixedZone("X", 3600))
	c.Apply(t0, in)
	got, ok := c.Lookup("x", t0)
	if !ok || !sameRecord(got, in) {
		t.Fatalf("Lookup = %+v, %v; want %+v", got, ok, in)
	}
	if got.IssuedAt.Location() != time.UTC {
		t.Errorf("IssuedAt location = %v, want UTC", got.IssuedAt.Location())
	}
	// A record without expiry comes back with the zero time.
	c.Apply(t0, rec("y", 1))
	got, _ = c.Lookup("y", t0)
	if !got.ExpiresAt.IsZero() {
		t.Errorf("ExpiresAt = %v, want zero", got.ExpiresAt)
	}
	if _, ok := c.Lookup("absent", t0); ok {
		t.Error("Lookup(absent) found a record")
	}
}

func TestExpiredRecordsAreNotStored(t *testing.T) {
	c := New()
	applied, _, expired := c.Apply(t0, expiring("a", 1, t0), expiring("b", 1, t0.Add(-time.Second)), expiring("c", 1, t0.Add(time.Nanosecond)))
	if got, want := ids(expired), []string{"a@1", "b@1"}; !slices.Equal(got, want) {
		t.Errorf("expired = %v, want %v (expiry at now counts as expired)", got, want)
	}
	if got, want := ids(applied), []string{"c@1"}; !slices.Equal(got, want) {
		t.Errorf("applied = %v, want %v", got, want)
	}
	if c.Len() != 1 {
		t.Errorf("Len = %d, want 1", c.Len())
	}
}

func TestNewerExpiredRecordRemovesHeldOne(t *testing.T) {
	c := New()
	c.Apply(t0, rec("a", 1))
	_, ignored, expired := c.Apply(t0, expiring("a", 2, t0.Add(-time.Minute)), expiring("a", 1, t0.Add(-time.Minute)))
	// Once a@2 removed the held record nothing is held, so the old expired
	// copy is reported as expired, not ignored.
	if got, want := ids(expired), []string{"a@2", "a@1"}; !slices.Equal(got, want) {
		t.Errorf("expired = %v, want %v", got, want)
	}
	if len(ignored) != 0 {
		t.Errorf("ignored = %v, want none", ids(ignored))
	}
	if _, ok := c.Lookup("a", t0); ok {
		t.Error("Lookup(a) still finds the superseded record")
	}
	if c.Len() != 0 {
		t.Errorf("Len = %d, want 0", c.Len())
	}
}

func TestLookupHidesExpiredUntilPruned(t *testing.T) {
	c := New()
	at := t0.Add(time.Minute)
	c.Apply(t0, expiring("a", 1, at), rec("b", 1))
	if _, ok := c.Lookup("a", at.Add(-time.Nanosecond)); !ok {
		t.Error("Lookup just before expiry found nothing")
	}
	if _, ok := c.Lookup("a", at); ok {
		t.Error("Lookup at expiry found the record")
	}
	if c.Len() != 2 {
		t.Errorf("Len = %d, want 2 (expired records stay until pruned)", c.Len())
	}
	if n := c.Prune(at.Add(-time.Nanosecond)); n != 0 {
		t.Errorf("Prune before expiry removed %d, want 0", n)
	}
	if n := c.Prune(at); n != 1 {
		t.Errorf("Prune at expiry removed %d, want 1", n)
	}
	if n := c.Prune(at.Add(time.Hour)); n != 0 {
		t.Errorf("second Prune removed %d, want 0", n)
	}
	if got := ids(c.Snapshot()); !slices.Equal(got, []string{"b@1"}) {
		t.Errorf("Snapshot = %v, want [b@1]", got)
	}
}

func TestPrunePartialBucket(t *testing.T) {
	c := New()
	// Three expiries within one second, and one a second later.
	base := t0.Add(time.Minute)
	c.Apply(t0,
		expiring("a", 1, base.Add(100*time.Millisecond)),
		expiring("b", 1, base.Add(500*time.Millisecond)),
		expiring("c", 1, base.Add(900*time.Millisecond)),
		expiring("d", 1, base.Add(1500*time.Millisecond)),
	)
	if n := c.Prune(base.Add(500 * time.Millisecond)); n != 2 {
		t.Errorf("Prune mid-second removed %d, want 2 (a, b)", n)
	}
	if _, ok := c.Lookup("c", base.Add(500*time.Millisecond)); !ok {
		t.Error("c was pruned before its expiry")
	}
	if n := c.Prune(base.Add(2 * time.Second)); n != 2 {
		t.Errorf("later Prune removed %d, want 2 (c, d)", n)
	}
	if c.Len() != 0 {
		t.Errorf("Len = %d, want 0", c.Len())
	}
}

func TestPruneFollowsReplacements(t *testing.T) {
	c := New()
	c.Apply(t0, expiring("a", 1, t0.Add(time.Second)), expiring("b", 1, t0.Add(time.Second)), expiring("c", 1, t0.Add(time.Second)))
	// a now never expires, b expires later, c expires in the same bucket
	// again (filed twice).
	c.Apply(t0, rec("a", 2), expiring("b", 2, t0.Add(time.Hour)), expiring("c", 2, t0.Add(time.Second+time.Millisecond)))
	if n := c.Prune(t0.Add(2 * time.Second)); n != 1 {
		t.Errorf("Prune removed %d, want 1 (c)", n)
	}
	if _, ok := c.Lookup("a", t0.Add(2*time.Hour)); !ok {
		t.Error("a (replaced by a never-expiring record) was lost")
	}
	if n := c.Prune(t0.Add(time.Hour)); n != 1 {
		t.Errorf("Prune removed %d, want 1 (b)", n)
	}
	if got := ids(c.Snapshot()); !slices.Equal(got, []string{"a@2"}) {
		t.Errorf("Snapshot = %v, want [a@2]", got)
	}
	if len(c.buckets) != 0 || len(c.due) != 0 {
		t.Errorf("buckets left behind: %d buckets, %d due", len(c.buckets), len(c.due))
	}
}

func TestPruneBeforeEpoch(t *testing.T) {
	c := New()
	old := time.Date(1960, 1, 1, 0, 0, 0, 500, time.UTC)
	c.Apply(old.Add(-time.Hour), expiring("a", 1, old))
	if n := c.Prune(old.Add(-time.Nanosecond)); n != 0 {
		t.Errorf("Prune before expiry removed %d, want 0", n)
	}
	if n := c.Prune(old); n != 1 {
		t.Errorf("Prune at expiry removed %d, want 1", n)
	}
}

func TestConcurrentApplyLookupPrune(t *testing.T) {
	c := New()
	const writers, perWriter, tasks = 4, 500, 50
	late := t0.Add(time.Hour)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				v := int64(i*writers + w + 1)
				r := rec(fmt.Sprintf("t%d", i%tasks), v)
				if i%3 == 0 {
					r.ExpiresAt = late.Add(time.Duration(i) * time.Millisecond)
				}
				c.Apply(t0, r)
			}
		})
	}
	for range 4 {
		wg.Go(func() {
			for i := range perWriter {
				id := fmt.Sprintf("t%d", i%tasks)
				if r, ok := c.Lookup(id, t0); ok && r.TaskID != id {
					t.Errorf("Lookup(%s) returned task %q", id, r.TaskID)
				}
				_ = c.Len()
			}
		})
	}
	// The pruner works on tasks of its own that expire while it runs.
	wg.Go(func() {
		for i := range perWriter {
			c.Apply(t0, expiring(fmt.Sprintf("p%d", i), 1, t0.Add(time.Duration(i+1)*time.Millisecond)))
			c.Prune(t0.Add(time.Duration(i) * time.Millisecond))
		}
		_ = c.Snapshot()
	})
	wg.Wait()
	if n := c.Prune(t0.Add(time.Minute)); n != 1 {
		t.Errorf("final Prune removed %d, want 1 (the last p task)", n)
	}
	if c.Len() != tasks {
		t.Errorf("Len = %d, want %d", c.Len(), tasks)
	}
	// Each task holds the highest version any writer sent for it.
	for task := range tasks {
		var want int64
		for w := range writers {
			for i := task; i < perWriter; i += tasks {
				want = max(want, int64(i*writers+w+1))
			}
		}
		got, ok := c.Lookup(fmt.Sprintf("t%d", task), t0)
		if !ok || got.Version != want {
			t.Errorf("t%d: version = %d (found %v), want %d", task, got.Version, ok, want)
		}
	}
}

func TestLookupDoesNotAllocate(t *testing.T) {
	c := New()
	c.Apply(t0, rec("a", 1))
	allocs := testing.AllocsPerRun(100, func() {
		if _, ok := c.Lookup("a", t0); !ok {
			t.Fatal("Lookup(a) found nothing")
		}
		c.Lookup("b", t0)
	})
	if allocs != 0 {
		t.Errorf("Lookup allocates %.1f times per call, want 0", allocs)
	}
}

func TestLoadCountsLikeApply(t *testing.T) {
	recs := []stemtype.RevokeRecord{rec("a", 2), rec("a", 1), expiring("b", 1, t0), rec("c", 1), rec("c", 3)}
	c := New()
	applied, ignored, expired := c.Load(t0, recs...)
	if applied != 3 || ignored != 1 || expired != 1 {
		t.Errorf("Load = %d applied, %d ignored, %d expired; want 3, 1, 1", applied, ignored, expired)
	}
	d := New()
	d.Apply(t0, recs...)
	got, want := ids(c.Snapshot()), ids(d.Snapshot())
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) || !slices.Equal(got, []string{"a@2", "c@3"}) {
		t.Errorf("Load held %v, Apply held %v; want [a@2 c@3] for both", got, want)
	}
}

func TestPruneIsNotBlockedByARecordThatExpiresLater(t *testing.T) {
	c := New()
	c.Apply(t0, expiring("a", 1, t0.Add(time.Second)), expiring("b", 1, t0.Add(2*time.Second)))
	// a now expires in an hour; its old bucket comes due first.
	c.Apply(t0, expiring("a", 2, t0.Add(time.Hour)))
	if n := c.Prune(t0.Add(3 * time.Second)); n != 1 {
		t.Errorf("Prune removed %d, want 1 (b)", n)
	}
	if _, ok := c.Lookup("a", t0.Add(3*time.Second)); !ok {
		t.Error("a was pruned before its new expiry")
	}
	if n := c.Prune(t0.Add(time.Hour)); n != 1 {
		t.Errorf("Prune at a's new expiry removed %d, want 1", n)
	}
}

// TestExpiredHeldRecordDoesNotBlockALaterRevoke: once a store pruned an
// expired record, the next revoke of the task gets its proposed version,
// which may be lower than the pruned one's (assigned max(stored+1,
// proposed) after a record proposed far in the future, or proposed by a
// controller whose clock ran ahead). A worker still holding the expired
// record must apply the later revoke, from a message (Apply) or a re-sync
// (Load, which runs before the cache's Prune), instead of ignoring it and
// starting the task.
func TestExpiredHeldRecordDoesNotBlockALaterRevoke(t *testing.T) {
	for _, via := range []string{"Apply", "Load"} {
		t.Run(via, func(t *testing.T) {
			c := New()
			c.Apply(t0, expiring("a", 9_000, t0.Add(time.Second)))
			later := expiring("a", 5_000, t0.Add(time.Hour))
			now := t0.Add(2 * time.Second)
			switch via {
			case "Apply":
				applied, ignored, _ := c.Apply(now, later)
				if len(applied) != 1 || len(ignored) != 0 {
					t.Errorf("Apply over an expired held record: applied %v, ignored %v; want it applied", ids(applied), ids(ignored))
				}
			case "Load":
				if applied, ignored, _ := c.Load(now, later); applied != 1 || ignored != 0 {
					t.Errorf("Load over an expired held record: applied %d, ignored %d; want it applied", applied, ignored)
				}
			}
			if got, ok := c.Lookup("a", now); !ok || !sameRecord(got, later) {
				t.Errorf("Lookup(a) = %+v, %v; want the later revoke", got, ok)
			}
			// Pruning files by expiry: the replaced record's bucket must
			// not take the later one with it.
			c.Prune(now)
			if _, ok := c.Lookup("a", now); !ok {
				t.Error("Prune removed the later revoke")
			}
		})
	}
}
