package stemdrivertest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// RunRevokes runs the revoke store conformance suite. open must return a
// new connection on every call; all of them share data. Each subtest writes
// under namespaces of its own.
func RunRevokes(t *testing.T, open func(t *testing.T) stemdriver.RevokeStore) {
	t.Helper()
	run := func(name string, fn func(t *testing.T, ns string)) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			fn(t, newNamespace(t))
		})
	}

	run("UpsertListRoundTrip", func(t *testing.T, ns string) {
		ctx := testContext(t)
		recs := []stemtype.RevokeRecord{fullRevoke(ns, "task-1", 100), fullRevoke(ns, "task-2", 101)}
		recs[1].ExpiresAt = time.Time{}
		recs[1].Terminate = false
		recs[1].KillAfterMs = 0
		stored, err := open(t).Upsert(ctx, recs...)
		if err != nil {
			t.Fatalf("Upsert: %v", err)
		}
		assertEqual(t, "records returned by Upsert", normRevokes(stored), normRevokes(recs))
		assertEqual(t, "records listed from another connection", mustList(ctx, t, open(t), ns), normRevokes(recs))
	})

	run("UpsertIsMonotonic", func(t *testing.T, ns string) {
		ctx := testContext(t)
		rs := open(t)
		v10 := fullRevoke(ns, "task-1", 10)
		v10.Reason = "v10"
		v5 := fullRevoke(ns, "task-1", 5)
		v5.Reason = "v5"
		same := fullRevoke(ns, "task-1", 10)
		same.Reason = "also v10"
		v20 := fullRevoke(ns, "task-1", 20)
		v20.Reason = "v20"

		mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{v10}, []stemtype.RevokeRecord{v10})
		mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{v5}, []stemtype.RevokeRecord{v10})
		mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{same}, []stemtype.RevokeRecord{v10})
		assertEqual(t, "list after lower and equal versions", mustList(ctx, t, rs, ns), normRevokes([]stemtype.RevokeRecord{v10}))
		mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{v20}, []stemtype.RevokeRecord{v20})
		assertEqual(t, "list after a higher version", mustList(ctx, t, rs, ns), normRevokes([]stemtype.RevokeRecord{v20}))

		// Within one call, records apply in order and each result is
		// what was stored right after it.
		a3, a2, a4 := fullRevoke(ns, "task-2", 3), fullRevoke(ns, "task-2", 2), fullRevoke(ns, "task-2", 4)
		b1 := fullRevoke(ns, "task-3", 1)
		mustUpsert(ctx, t, rs,
			[]stemtype.RevokeRecord{a3, a2, b1, a4, v5},
			[]stemtype.RevokeRecord{a3, a3, b1, a4, v20})
	})

	run("ListByNamespaceOnly", func(t *testing.T, ns string) {
		ctx := testContext(t)
		ns2 := newNamespace(t)
		rs := open(t)
		mine := []stemtype.RevokeRecord{fullRevoke(ns, "task-1", 1), fullRevoke(ns, "task-2", 2)}
		theirs := []stemtype.RevokeRecord{fullRevoke(ns2, "task-1", 9), fullRevoke(ns2, "task-3", 9)}
		if _, err := rs.Upsert(ctx, append(slices.Clone(mine), theirs...)...); err != nil {
			t.Fatalf("Upsert: %v", err)
		}
		assertEqual(t, "records of the first namespace", mustList(ctx, t, rs, ns), normRevokes(mine))
		assertEqual(t, "records of the second namespace", mustList(ctx, t, rs, ns2), normRevokes(theirs))
		if got := mustList(ctx, t, rs, newNamespace(t)); len(got) != 0 {
			t.Fatalf("List of an unused namespace returned %d records", len(got))
		}
	})

	run("PruneDeletesExpiredOnly", func(t *testing.T, ns string) {
		ctx := testContext(t)
		ns2 := newNamespace(t)
		rs := open(t)
		at := now()
		expired := fullRevoke(ns, "expired", 1)
		expired.ExpiresAt = at.Add(-time.Hour)
		atNow := fullRevoke(ns, "at-now", 2)
		atNow.ExpiresAt = at
		live := fullRevoke(ns, "live", 3)
		live.ExpiresAt = at.Add(time.Hour)
		forever := fullRevoke(ns, "forever", 4)
		forever.ExpiresAt = time.Time{}
		otherExpired := fullRevoke(ns2, "expired", 5)
		otherExpired.ExpiresAt = at.Add(-time.Hour)
		if _, err := rs.Upsert(ctx, expired, atNow, live, forever, otherExpired); err != nil {
			t.Fatalf("Upsert: %v", err)
		}
		// Expired records are listed until pruned.
		if got := mustList(ctx, t, rs, ns); len(got) != 4 {
			t.Fatalf("List before Prune returned %d records, want 4", len(got))
		}
		n, err := open(t).Prune(ctx, ns, at)
		if err != nil {
			t.Fatalf("Prune: %v", err)
		}
		if n != 2 {
			t.Fatalf("Prune deleted %d records, want 2 (expired before and at now)", n)
		}
		assertEqual(t, "records after Prune", mustList(ctx, t, rs, ns), normRevokes([]stemtype.RevokeRecord{live, forever}))
		if n, err := rs.Prune(ctx, ns, at); err != nil || n != 0 {
			t.Fatalf("second Prune = (%d, %v), want (0, nil)", n, err)
		}
		assertEqual(t, "records of the other namespace", mustList(ctx, t, rs, ns2), normRevokes([]stemtype.RevokeRecord{otherExpired}))
	})

	run("ConcurrentWritersConverge", func(t *testing.T, ns string) {
		ctx := testContext(t)
		const writers, tasks, versions = 8, 20, 30
		stores := []stemdriver.RevokeStore{open(t), open(t), open(t)}
		var wg sync.WaitGroup
		for w := range writers {
			rs := stores[w%len(stores)]
			wg.Go(func() {
				var recs []stemtype.RevokeRecord
				for task := range tasks {
					for v := 1; v <= versions; v++ {
						r := fullRevoke(ns, fmt.Sprintf("task-%d", task), int64(v))
						r.Reason = fmt.Sprintf("writer %d version %d", w, v)
						recs = append(recs, r)
					}
				}
				rand.Shuffle(len(recs), func(i, j int) { recs[i], recs[j] = recs[j], recs[i] })
				for len(recs) > 0 {
					n := min(len(recs), 1+rand.IntN(8))
					batch := recs[:n]
					recs = recs[n:]
					stored, err := rs.Upsert(ctx, batch...)
					if err != nil {
						t.Errorf("writer %d: Upsert: %v", w, err)
						return
					}
					if len(stored) != len(batch) {
						t.Errorf("writer %d: Upsert of %d returned %d records", w, len(batch), len(stored))
						return
					}
					for i := range batch {
						if stored[i].TaskID != batch[i].TaskID || stored[i].Version < batch[i].Version {
							t.Errorf("writer %d: Upsert of %s v%d returned %s v%d",
								w, batch[i].TaskID, batch[i].Version, stored[i].TaskID, stored[i].Version)
							return
						}
					}
				}
			})
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		for _, rs := range stores {
			got := mustList(ctx, t, rs, ns)
			if len(got) != tasks {
				t.Fatalf("List returned %d records, want %d", len(got), tasks)
			}
			for _, r := range got {
				if r.Version != versions {
					t.Errorf("task %s converged on version %d, want %d", r.TaskID, r.Version, versions)
				}
			}
		}
	})

	run("ManyRecordsListed", func(t *testing.T, ns string) {
		ctx := testContext(t)
		const total = 2000
		rs := open(t)
		recs := make([]stemtype.RevokeRecord, total)
		for i := range recs {
			recs[i] = fullRevoke(ns, fmt.Sprintf("task-%04d", i), int64(1000+i))
		}
		for chunk := range slices.Chunk(recs, 500) {
			if _, err := rs.Upsert(ctx, chunk...); err != nil {
				t.Fatalf("Upsert of %d: %v", len(chunk), err)
			}
		}
		assertEqual(t, "listed records", mustList(ctx, t, open(t), ns), normRevokes(recs))
	})

	run("ClosedReturnsErrClosed", func(t *testing.T, ns string) {
		ctx := testContext(t)
		rs := open(t)
		if err := rs.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if _, err := rs.Upsert(ctx, fullRevoke(ns, "task-1", 1)); !errors.Is(err, stemdriver.ErrClosed) {
			t.Errorf("Upsert after Close = %v, want ErrClosed", err)
		}
		if _, err := rs.List(ctx, ns); !errors.Is(err, stemdriver.ErrClosed) {
			t.Errorf("List after Close = %v, want ErrClosed", err)
		}
		if _, err := rs.Prune(ctx, ns, now()); !errors.Is(err, stemdriver.ErrClosed) {
			t.Errorf("Prune after Close = %v, want ErrClosed", err)
		}
	})
}

// fullRevoke returns a revoke record with every field set.
func fullRevoke(ns, task string, version int64) stemtype.RevokeRecord {
	at := now()
	return stemtype.RevokeRecord{
		Namespace:   ns,
		TaskID:      task,
		Version:     version,
		IssuedAt:    at,
		Terminate:   true,
		KillAfterMs: 1500,
		Reason:      "stemdrivertest",
		RequestedBy: "ops@example",
		ExpiresAt:   at.Add(24 * time.Hour),
	}
}

// normRevokes returns copies of recs with normalized times, sorted by task
// id, so that any faithful round trip compares equal.
func normRevokes(recs []stemtype.RevokeRecord) []stemtype.RevokeRecord {
	out := make([]stemtype.RevokeRecord, len(recs))
	for i, r := range recs {
		r.IssuedAt = normTime(r.IssuedAt)
		r.ExpiresAt = normTime(r.ExpiresAt)
		out[i] = r
	}
	slices.SortStableFunc(out, func(a, b stemtype.RevokeRecord) int { return cmp.Compare(a.TaskID, b.TaskID) })
	return emptyNilSlice(out)
}

func mustList(ctx context.Context, t *testing.T, rs stemdriver.RevokeStore, ns string) []stemtype.RevokeRecord {
	t.Helper()
	recs, err := rs.List(ctx, ns)
	if err != nil {
		t.Fatalf("List %s: %v", ns, err)
	}
	return normRevokes(recs)
}

// mustUpsert upserts recs and checks the records returned, in order.
func mustUpsert(ctx context.Context, t *testing.T, rs stemdriver.RevokeStore, recs, want []stemtype.RevokeRecord) {
	t.Helper()
	got, err := rs.Upsert(ctx, recs...)
	if err != nil {
		t.Fatalf("Upsert: %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("Upsert of %d records returned %d", len(recs), len(got))
	}
	for i := range want {
		assertEqual(t, fmt.Sprintf("record %d returned by Upsert", i),
			normRevokes(got[i:i+1]), normRevokes(want[i:i+1]))
	}
}
