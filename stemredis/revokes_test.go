package stemredis

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// TestRevokersOnSeparateConnectionsConverge has two stores, each with its
// own connections, write interleaved versions of the same tasks from many
// goroutines; the stored record of every task must be its highest version,
// and every Upsert must return a record at least as new as its input.
func TestRevokersOnSeparateConnectionsConverge(t *testing.T) {
	ns := newNS(t)
	a, b := openTestRevokes(t), openTestRevokes(t)
	ctx := testCtx(t)

	const tasks, versions, writers = 5, 200, 8
	base := time.Now().UnixMicro()
	// Every (task, version) pair once, shuffled, split between writers
	// that alternate between the two stores.
	type job struct {
		task    string
		version int64
	}
	var jobs []job
	for i := range tasks {
		for v := range versions {
			jobs = append(jobs, job{fmt.Sprintf("task-%d", i), base + int64(v)})
		}
	}
	rand.Shuffle(len(jobs), func(i, j int) { jobs[i], jobs[j] = jobs[j], jobs[i] })

	var wg sync.WaitGroup
	for w := range writers {
		store := a
		if w%2 == 1 {
			store = b
		}
		wg.Go(func() {
			for i := w; i < len(jobs); i += writers {
				j := jobs[i]
				rec := stemtype.RevokeRecord{Namespace: ns, TaskID: j.task, Version: j.version, IssuedAt: time.UnixMicro(j.version).UTC(), Reason: fmt.Sprintf("v%d", j.version)}
				got, err := store.Upsert(ctx, rec)
				if err != nil {
					t.Errorf("Upsert: %v", err)
					return
				}
				if len(got) != 1 || got[0].TaskID != j.task || got[0].Version < j.version {
					t.Errorf("Upsert of version %d of %s returned %+v, want a record at least as new", j.version, j.task, got)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, store := range []*Revokes{a, b} {
		recs, err := store.List(ctx, ns)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if len(recs) != tasks {
			t.Fatalf("List returned %d records, want %d", len(recs), tasks)
		}
		for _, r := range recs {
			if want := base + versions - 1; r.Version != want || r.Reason != fmt.Sprintf("v%d", want) {
				t.Errorf("task %s stored version %d (reason %q), want %d", r.TaskID, r.Version, r.Reason, want)
			}
		}
	}
}

// TestRevokeVersionsCompareExactly checks versions that a float64 cannot
// tell apart: the script compares them as decimal strings.
func TestRevokeVersionsCompareExactly(t *testing.T) {
	ns := newNS(t)
	s := openTestRevokes(t)
	ctx := testCtx(t)
	const big = int64(1) << 60 // 2^60 and 2^60+1 are the same float64
	for _, v := range []int64{big + 1, big, 999, big + 1} {
		if _, err := s.Upsert(ctx, stemtype.RevokeRecord{Namespace: ns, TaskID: "t", Version: v}); err != nil {
			t.Fatalf("Upsert %d: %v", v, err)
		}
	}
	recs, err := s.List(ctx, ns)
	if err != nil || len(recs) != 1 || recs[0].Version != big+1 {
		t.Fatalf("List = %+v, %v; want the one record at version %d", recs, err, big+1)
	}
	got, err := s.Upsert(ctx, stemtype.RevokeRecord{Namespace: ns, TaskID: "t", Version: big + 2, Reason: "newest"})
	if err != nil || got[0].Version != big+2 || got[0].Reason != "newest" {
		t.Fatalf("Upsert of a higher version returned %+v, %v", got, err)
	}
}

func TestRevokeUpsertBatchAcrossNamespacesAndPrune(t *testing.T) {
	ns1, ns2 := newNS(t), newNS(t)
	s := openTestRevokes(t)
	ctx := testCtx(t)
	now := time.Now().UTC().Truncate(time.Microsecond)
	var recs []stemtype.RevokeRecord
	for i := range 1200 { // more than one script chunk per namespace
		ns := ns1
		if i%3 == 0 {
			ns = ns2
		}
		r := stemtype.RevokeRecord{Namespace: ns, TaskID: fmt.Sprintf("t%d", i), Version: int64(i + 1)}
		if i%2 == 0 {
			r.ExpiresAt = now.Add(-time.Second)
		}
		recs = append(recs, r)
	}
	// The same task twice in one call: the later, higher version wins.
	recs = append(recs, stemtype.RevokeRecord{Namespace: ns1, TaskID: "t1", Version: 5000, Reason: "later"})
	got, err := s.Upsert(ctx, recs...)
	if err != nil {
		t.Fatalf("Upsert: %v", err)
	}
	if len(got) != len(recs) || got[1].Version != 2 || got[len(got)-1].Reason != "later" {
		t.Fatalf("Upsert returned %d records (second %+v, last %+v)", len(got), got[1], got[len(got)-1])
	}
	count := func(ns string) int {
		t.Helper()
		l, err := s.List(ctx, ns)
		if err != nil {
			t.Fatal(err)
		}
		ids := make([]string, 0, len(l))
		for _, r := range l {
			ids = append(ids, r.TaskID)
		}
		slices.Sort(ids)
		if len(slices.Compact(ids)) != len(l) {
			t.Fatalf("List of %s returned duplicates", ns)
		}
		return len(l)
	}
	if n1, n2 := count(ns1), count(ns2); n1 != 800 || n2 != 400 {
		t.Fatalf("List: %d and %d records, want 800 and 400", n1, n2)
	}
	pruned, err := s.Prune(ctx, ns1, now)
	if err != nil {
		t.Fatalf("Prune: %v", err)
	}
	// In ns1 (i%3 != 0) the even i expired: 400 of them.
	if pruned != 400 || count(ns1) != 400 || count(ns2) != 400 {
		t.Fatalf("Prune deleted %d, leaving %d and %d; want 400 deleted, 400 and 400 left", pruned, count(ns1), count(ns2))
	}
}
