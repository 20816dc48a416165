package stemdrivertest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// revokesProperties lists the Revokes tests: every revoke store passes them,
// except those that need a capability caps does not declare.
func revokesProperties(caps Capabilities) []property[stemdriver.RevokeStore] {
	return []property[stemdriver.RevokeStore]{
		{name: "Capabilities", fn: func(t *testing.T, open opener[stemdriver.RevokeStore], ns string) {
			for _, m := range revokeCapabilityMismatches(open(t, ns), caps) {
				t.Error(m)
			}
		}},
		{name: "UpsertListRoundTrip", fn: testRevokesUpsertListRoundTrip},
		{name: "UpsertAssignsVersions", fn: testRevokesUpsertAssignsVersions},
		{name: "NoVersionPastTheHighest", fn: testRevokesNoVersionPastTheHighest},
		{name: "CausalOrder", fn: testRevokesCausalOrder},
		{name: "DuplicateIDsInOneCall", fn: testRevokesDuplicateIDsInOneCall},
		{name: "UpsertOfExpiredRecordIsStoredUntilPruned", fn: testRevokesUpsertOfExpiredRecordIsStoredUntilPruned},
		{name: "PruneMoreThanAThousand", fn: testRevokesPruneMoreThanAThousand},
		{name: "ListByNamespaceOnly", fn: testRevokesListByNamespaceOnly},
		{name: "PruneDeletesExpiredOnly", fn: testRevokesPruneDeletesExpiredOnly},
		{name: "ConcurrentWritersConverge", fn: testRevokesConcurrentWritersConverge},
		{name: "ManyRecordsListed", fn: testRevokesManyRecordsListed},
		{name: "ClosedReturnsErrClosed", fn: testRevokesClosedReturnsErrClosed},
		{name: "NameRevokesKeptApartFromIDs", fn: testRevokesNameRevokesKeptApartFromIDs},
		{name: "PrunedStayPruned", fn: testRevokesPrunedStayPruned},
		{name: "ChangesListedSinceCursor", fn: testRevokesChangesListedSinceCursor, needs: capRevokeChanges},
		{name: "ChangesAcrossPrunesAndPages", fn: testRevokesChangesAcrossPrunesAndPages, needs: capRevokeChanges},
		{name: "ChangesOfUnknownCursorListEverything", fn: testRevokesChangesOfUnknownCursorListEverything, needs: capRevokeChanges},
	}
}

// changeLister returns rs as a stemdriver.RevokeChangeLister, failing t when
// it is not one.
func changeLister(t *testing.T, rs stemdriver.RevokeStore) stemdriver.RevokeChangeLister {
	t.Helper()
	cl, ok := rs.(stemdriver.RevokeChangeLister)
	if !ok {
		t.Fatalf("%T declares RevokeChanges but does not implement stemdriver.RevokeChangeLister", rs)
	}
	return cl
}

// mustChanges calls ListChanges and returns the newest record listed for
// each task, normalized, and the next cursor.
func mustChanges(ctx context.Context, t *testing.T, rs stemdriver.RevokeStore, ns, cursor string) ([]stemtype.RevokeRecord, string) {
	t.Helper()
	recs, next, err := changeLister(t, rs).ListChanges(ctx, ns, cursor)
	if err != nil {
		t.Fatalf("ListChanges(%s, %q): %v", ns, cursor, err)
	}
	if next == "" {
		t.Fatalf("ListChanges(%s, %q) returned the cursor \"\"", ns, cursor)
	}
	// A task may be listed more than once; the last listed is the newest.
	last := map[string]stemtype.RevokeRecord{}
	for _, r := range recs {
		if r.Namespace != ns {
			t.Errorf("ListChanges(%s) listed a record of namespace %q", ns, r.Namespace)
		}
		if held, ok := last[r.TaskID]; ok && held.Version > r.Version {
			t.Errorf("ListChanges listed task %s at version %d after version %d", r.TaskID, r.Version, held.Version)
		}
		last[r.TaskID] = r
	}
	return normRevokes(slices.Collect(maps.Values(last))), next
}

// testRevokesChangesListedSinceCursor: "" lists everything; a cursor lists
// what was upserted since, from any connection, and nothing when nothing
// changed; other namespaces never show.
func testRevokesChangesListedSinceCursor(t *testing.T, open opener[stemdriver.RevokeStore], ns string) {
	ctx := testContext(t)
	rs := open(t, ns)
	a, b := fullRevoke(ns, "task-a", 10), fullRevoke(ns, "task-b", 10)
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{a, b}, []stemtype.RevokeRecord{a, b})
	all, cur := mustChanges(ctx, t, rs, ns, "")
	assertEqual(t, "changes since \"\"", all, normRevokes([]stemtype.RevokeRecord{a, b}))

	none, cur2 := mustChanges(ctx, t, rs, ns, cur)
	assertEqual(t, "changes when nothing changed", none, []stemtype.RevokeRecord(nil))

	// Another namespace's writes do not show.
	other := ns + "-other"
	others := open(t, other)
	theirs := fullRevoke(other, "task-a", 10)
	mustUpsert(ctx, t, others, []stemtype.RevokeRecord{theirs}, []stemtype.RevokeRecord{theirs})
	none, cur2 = mustChanges(ctx, t, rs, ns, cur2)
	assertEqual(t, "changes after another namespace's upsert", none, []stemtype.RevokeRecord(nil))

	// A re-upserted task and a new one show, from another connection,
	// each once as stored last.
	b2 := fullRevoke(ns, "task-b", 5)
	b2.Reason = "again"
	c := fullRevoke(ns, "task-c", 7)
	mustUpsert(ctx, t, open(t, ns), []stemtype.RevokeRecord{b2, c}, []stemtype.RevokeRecord{withVersion(b2, 11), c})
	b3 := fullRevoke(ns, "task-b", 5)
	b3.Reason = "third"
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{b3}, []stemtype.RevokeRecord{withVersion(b3, 12)})
	got, cur3 := mustChanges(ctx, t, open(t, ns), ns, cur2)
	assertEqual(t, "changes since the cursor", got, normRevokes([]stemtype.RevokeRecord{withVersion(b3, 12), c}))
	none, _ = mustChanges(ctx, t, rs, ns, cur3)
	assertEqual(t, "changes after reading them", none, []stemtype.RevokeRecord(nil))

	// An older cursor still lists everything since it (a worker that
	// failed to store its next cursor loses nothing).
	got, _ = mustChanges(ctx, t, rs, ns, cur)
	assertEqual(t, "changes since an older cursor", got, normRevokes([]stemtype.RevokeRecord{withVersion(b3, 12), c}))
}

// testRevokesChangesAcrossPrunesAndPages: pruned records are not listed;
// more changes than one read of a backend's page are all listed.
func testRevokesChangesAcrossPrunesAndPages(t *testing.T, open opener[stemdriver.RevokeStore], ns string) {
	ctx := testContext(t)
	rs := open(t, ns)
	_, cur := mustChanges(ctx, t, rs, ns, "")
	gone := fullRevoke(ns, "gone", 1)
	gone.ExpiresAt = now().Add(-time.Hour)
	kept := fullRevoke(ns, "kept", 1)
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{gone, kept}, []stemtype.RevokeRecord{gone, kept})
	if n, err := rs.Prune(ctx, ns, now()); err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1", n, err)
	}
	got, cur := mustChanges(ctx, t, rs, ns, cur)
	assertEqual(t, "changes after a prune", got, normRevokes([]stemtype.RevokeRecord{kept}))

	const total = 12_000
	recs := make([]stemtype.RevokeRecord, total)
	for i := range recs {
		recs[i] = fullRevoke(ns, fmt.Sprintf("task-%05d", i), 100)
	}
	for chunk := range slices.Chunk(recs, 2000) {
		if _, err := rs.Upsert(ctx, chunk...); err != nil {
			t.Fatalf("Upsert of %d: %v", len(chunk), err)
		}
	}
	got, cur = mustChanges(ctx, t, rs, ns, cur)
	assertEqual(t, "changes after many upserts", got, normRevokes(recs))
	got, _ = mustChanges(ctx, t, rs, ns, cur)
	assertEqual(t, "changes after reading many", got, []stemtype.RevokeRecord(nil))
}

// testRevokesChangesOfUnknownCursorListEverything: a cursor the store did
// not issue lists every record, never an error or a partial set.
func testRevokesChangesOfUnknownCursorListEverything(t *testing.T, open opener[stemdriver.RevokeStore], ns string) {
	ctx := testContext(t)
	rs := open(t, ns)
	a := fullRevoke(ns, "task-a", 3)
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{a}, []stemtype.RevokeRecord{a})
	for _, cursor := range []string{"not a cursor", "1:2:3", ":", "999999999:5", "-1"} {
		got, _ := mustChanges(ctx, t, rs, ns, cursor)
		assertEqual(t, fmt.Sprintf("changes since cursor %q", cursor), got, normRevokes([]stemtype.RevokeRecord{a}))
	}
}

func testRevokesUpsertListRoundTrip(t *testing.T, open opener[stemdriver.RevokeStore], ns string) {
	ctx := testContext(t)
	recs := []stemtype.RevokeRecord{fullRevoke(ns, "task-1", 100), fullRevoke(ns, "task-2", 101)}
	recs[1].ExpiresAt = time.Time{}
	recs[1].Terminate = false
	recs[1].KillAfterMs = 0
	stored, err := open(t, ns).Upsert(ctx, recs...)
	if err != nil {
		t.Fatalf("Upsert: %v", err)
	}
	assertEqual(t, "records returned by Upsert", normRevokes(stored), normRevokes(recs))
	assertEqual(t, "records listed from another connection", mustList(ctx, t, open(t, ns), ns), normRevokes(recs))
}

// A revoke by task name (Kind, Name and the reserved key as TaskID) and a
// queue pause record (Kind, Queue, Resumed) are stored, versioned and
// listed like any record, with their fields, apart from a revoke of a task
// whose id is that name: none replaces another, nor takes part in
// another's versions.
func testRevokesNameRevokesKeptApartFromIDs(t *testing.T, open opener[stemdriver.RevokeStore], ns string) {
	ctx := testContext(t)
	rs := open(t, ns)
	byID := fullRevoke(ns, "email.send", 50)
	byName := fullRevoke(ns, stemtype.NameRevokeKey("email.send"), 30)
	byName.Kind, byName.Name, byName.Reason = stemtype.RevokeKindName, "email.send", "by name"
	pause := fullRevoke(ns, stemtype.QueuePauseKey("email.send"), 20)
	pause.Kind, pause.Queue, pause.Resumed, pause.Terminate, pause.KillAfterMs = stemtype.RevokeKindQueuePause, "email.send", true, false, 0
	for _, r := range []stemtype.RevokeRecord{byName, pause} {
		if err := r.Validate(); err != nil {
			t.Fatalf("the %s record is invalid: %v", r.Kind, err)
		}
	}
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{byID, byName, pause}, []stemtype.RevokeRecord{byID, byName, pause})
	assertEqual(t, "list of an id, a name and a queue record", mustList(ctx, t, open(t, ns), ns),
		normRevokes([]stemtype.RevokeRecord{byID, byName, pause}))
	// The name record's next version follows its own, not the id's.
	again := byName
	again.Version, again.Reason = 1, "by name again"
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{again}, []stemtype.RevokeRecord{withVersion(again, 31)})
	assertEqual(t, "list after a second revoke by name", mustList(ctx, t, rs, ns),
		normRevokes([]stemtype.RevokeRecord{byID, withVersion(again, 31), pause}))
	if cl, ok := rs.(stemdriver.RevokeChangeLister); ok {
		recs, _, err := cl.ListChanges(ctx, ns, "")
		if err != nil {
			t.Fatalf("ListChanges: %v", err)
		}
		last := map[string]stemtype.RevokeRecord{}
		for _, r := range recs {
			last[r.TaskID] = r
		}
		assertEqual(t, "changes listed", normRevokes(slices.Collect(maps.Values(last))),
			normRevokes([]stemtype.RevokeRecord{byID, withVersion(again, 31), pause}))
	}
}

func testRevokesUpsertAssignsVersions(t *testing.T, open opener[stemdriver.RevokeStore], ns string) {
	ctx := testContext(t)
	rs := open(t, ns)
	v10 := fullRevoke(ns, "task-1", 10)
	v10.Reason = "v10"
	v5 := fullRevoke(ns, "task-1", 5)
	v5.Reason = "v5"
	same := fullRevoke(ns, "task-1", 10)
	same.Reason = "also v10"
	v20 := fullRevoke(ns, "task-1", 20)
	v20.Reason = "v20"

	// A record is always stored, with version max(stored+1,
	// proposed), and Upsert returns it with that version.
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{v10}, []stemtype.RevokeRecord{v10})
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{v5}, []stemtype.RevokeRecord{withVersion(v5, 11)})
	mustUpsert(ctx, t, open(t, ns), []stemtype.RevokeRecord{same}, []stemtype.RevokeRecord{withVersion(same, 12)})
	assertEqual(t, "list after lower and equal proposed versions", mustList(ctx, t, rs, ns), normRevokes([]stemtype.RevokeRecord{withVersion(same, 12)}))
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{v20}, []stemtype.RevokeRecord{v20})
	assertEqual(t, "list after a higher version", mustList(ctx, t, rs, ns), normRevokes([]stemtype.RevokeRecord{v20}))

	// Within one call, records apply in order and each result is
	// what was stored right after it.
	a3, a2, a4 := fullRevoke(ns, "task-2", 3), fullRevoke(ns, "task-2", 2), fullRevoke(ns, "task-2", 4)
	a2.Reason, a4.Reason = "a2", "a4"
	b1 := fullRevoke(ns, "task-3", 1)
	mustUpsert(ctx, t, rs,
		[]stemtype.RevokeRecord{a3, a2, b1, a4, v5},
		[]stemtype.RevokeRecord{a3, withVersion(a2, 4), b1, withVersion(a4, 5), withVersion(v5, 21)})
	assertEqual(t, "list after one call", mustList(ctx, t, rs, ns),
		normRevokes([]stemtype.RevokeRecord{withVersion(v5, 21), withVersion(a4, 5), b1}))
}

func testRevokesNoVersionPastTheHighest(t *testing.T, open opener[stemdriver.RevokeStore], ns string) {
	ctx := testContext(t)
	rs := open(t, ns)
	top := fullRevoke(ns, "task-1", math.MaxInt64)
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{top}, []stemtype.RevokeRecord{top})
	later := fullRevoke(ns, "task-1", 1)
	later.Reason = "later"
	if got, err := rs.Upsert(ctx, later); err == nil {
		t.Fatalf("Upsert over a record at the highest version = %+v, want an error", got)
	}
	assertEqual(t, "list after the refused Upsert", mustList(ctx, t, rs, ns), normRevokes([]stemtype.RevokeRecord{top}))
}

func testRevokesCausalOrder(t *testing.T, open opener[stemdriver.RevokeStore], ns string) {
	ctx := testContext(t)
	rs := open(t, ns)
	// A big batch whose versions run ahead of the clock (as a
	// controller that added i for the i-th task once proposed)...
	const total = 3000
	base := time.Now().UnixMicro()
	batch := make([]stemtype.RevokeRecord, total)
	for i := range batch {
		batch[i] = fullRevoke(ns, fmt.Sprintf("task-%04d", i), base+int64(i))
		batch[i].Terminate, batch[i].KillAfterMs = false, 0
	}
	stored, err := rs.Upsert(ctx, batch...)
	if err != nil {
		t.Fatalf("Upsert of %d: %v", total, err)
	}
	assertEqual(t, "batch returned", normRevokes(stored), normRevokes(batch))
	// ...then a revoke of one of its tasks issued after it returned,
	// proposing a lower version: it wins, with a higher version.
	last := batch[total-1]
	later := fullRevoke(ns, last.TaskID, base+1)
	later.Reason = "terminate it"
	got, err := open(t, ns).Upsert(ctx, later)
	if err != nil {
		t.Fatalf("later Upsert: %v", err)
	}
	if len(got) != 1 || got[0].Version <= last.Version {
		t.Fatalf("later Upsert returned %+v, want a version above the batch's %d", got, last.Version)
	}
	assertEqual(t, "record returned for the later revoke", normRevokes(got), normRevokes([]stemtype.RevokeRecord{withVersion(later, got[0].Version)}))
	for _, r := range mustList(ctx, t, open(t, ns), ns) {
		if r.TaskID == last.TaskID {
			assertEqual(t, "stored record of "+r.TaskID, r, normRevokes(got)[0])
		}
	}
}

func testRevokesDuplicateIDsInOneCall(t *testing.T, open opener[stemdriver.RevokeStore], ns string) {
	ctx := testContext(t)
	rs := open(t, ns)
	v := time.Now().UnixMicro()
	first, second, third := fullRevoke(ns, "dup", v), fullRevoke(ns, "dup", v), fullRevoke(ns, "dup", v)
	second.Reason, third.Reason = "second", "third"
	other := fullRevoke(ns, "other", v)
	mustUpsert(ctx, t, rs,
		[]stemtype.RevokeRecord{first, other, second, third},
		[]stemtype.RevokeRecord{first, other, withVersion(second, v+1), withVersion(third, v+2)})
	assertEqual(t, "list", mustList(ctx, t, open(t, ns), ns), normRevokes([]stemtype.RevokeRecord{withVersion(third, v+2), other}))
}

func testRevokesUpsertOfExpiredRecordIsStoredUntilPruned(t *testing.T, open opener[stemdriver.RevokeStore], ns string) {
	ctx := testContext(t)
	rs := open(t, ns)
	gone := fullRevoke(ns, "gone", 7)
	gone.ExpiresAt = now().Add(-time.Hour)
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{gone}, []stemtype.RevokeRecord{gone})
	assertEqual(t, "list before Prune", mustList(ctx, t, open(t, ns), ns), normRevokes([]stemtype.RevokeRecord{gone}))
	if n, err := rs.Prune(ctx, ns, now()); err != nil || n != 1 {
		t.Fatalf("Prune = (%d, %v), want (1, nil)", n, err)
	}
	if got := mustList(ctx, t, rs, ns); len(got) != 0 {
		t.Fatalf("List after Prune returned %d records", len(got))
	}
}

func testRevokesPruneMoreThanAThousand(t *testing.T, open opener[stemdriver.RevokeStore], ns string) {
	ctx := testContext(t)
	rs := open(t, ns)
	const expired, live = 2500, 7
	at := now()
	var recs, keep []stemtype.RevokeRecord
	for i := range expired + live {
		r := fullRevoke(ns, fmt.Sprintf("task-%04d", i), int64(1+i))
		if i%(expired/live+1) == 0 && len(keep) < live {
			keep = append(keep, r) // expires in a day
		} else {
			r.ExpiresAt = at.Add(-time.Minute)
		}
		recs = append(recs, r)
	}
	for chunk := range slices.Chunk(recs, 1000) {
		if _, err := rs.Upsert(ctx, chunk...); err != nil {
			t.Fatalf("Upsert of %d: %v", len(chunk), err)
		}
	}
	n, err := open(t, ns).Prune(ctx, ns, at)
	if err != nil {
		t.Fatalf("Prune: %v", err)
	}
	if n != expired {
		t.Fatalf("Prune deleted %d records, want %d", n, expired)
	}
	assertEqual(t, "records after Prune", mustList(ctx, t, rs, ns), normRevokes(keep))
}

func testRevokesListByNamespaceOnly(t *testing.T, open opener[stemdriver.RevokeStore], ns string) {
	ctx := testContext(t)
	ns2 := newNamespace(t)
	open(t, ns2) // the opener cleans up ns2's records too
	rs := open(t, ns)
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
}

func testRevokesPruneDeletesExpiredOnly(t *testing.T, open opener[stemdriver.RevokeStore], ns string) {
	ctx := testContext(t)
	ns2 := newNamespace(t)
	open(t, ns2) // the opener cleans up ns2's records too
	rs := open(t, ns)
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
	n, err := open(t, ns).Prune(ctx, ns, at)
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
}

func testRevokesConcurrentWritersConverge(t *testing.T, open opener[stemdriver.RevokeStore], ns string) {
	// About a thousand write batches: on a store that syncs each one to
	// disk (a file), they take under a second on an idle machine and over
	// 30s while other suites keep the same disk busy (seen in CI), so this
	// property's failure bound is longer than the suite's guard.
	ctx, cancel := context.WithTimeout(t.Context(), 5*guard)
	t.Cleanup(cancel)
	const writers, tasks, versions = 8, 20, 30
	stores := []stemdriver.RevokeStore{open(t, ns), open(t, ns), open(t, ns)}
	// Every write is applied with a version above the stored one, so
	// a task's versions are all distinct, and the store holds, per
	// task, the write with the highest of them: the last applied.
	var (
		mu       sync.Mutex
		assigned = map[string]map[int64]string{} // task -> version -> reason
	)
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
				mu.Lock()
				for i := range batch {
					if stored[i].TaskID != batch[i].TaskID || stored[i].Reason != batch[i].Reason || stored[i].Version < batch[i].Version {
						t.Errorf("writer %d: Upsert of %s v%d (%s) returned %s v%d (%s)", w,
							batch[i].TaskID, batch[i].Version, batch[i].Reason, stored[i].TaskID, stored[i].Version, stored[i].Reason)
					}
					m := assigned[stored[i].TaskID]
					if m == nil {
						m = map[int64]string{}
						assigned[stored[i].TaskID] = m
					}
					if prev, dup := m[stored[i].Version]; dup {
						t.Errorf("version %d of %s assigned twice: to %q and %q", stored[i].Version, stored[i].TaskID, prev, stored[i].Reason)
					}
					m[stored[i].Version] = stored[i].Reason
				}
				mu.Unlock()
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
			m := assigned[r.TaskID]
			if len(m) != writers*versions {
				t.Errorf("task %s: %d distinct versions assigned, want %d", r.TaskID, len(m), writers*versions)
			}
			top := slices.Max(slices.Collect(maps.Keys(m)))
			if r.Version != top || r.Reason != m[top] {
				t.Errorf("task %s converged on version %d (%s), want the highest assigned, %d (%s)", r.TaskID, r.Version, r.Reason, top, m[top])
			}
		}
	}
}

func testRevokesManyRecordsListed(t *testing.T, open opener[stemdriver.RevokeStore], ns string) {
	ctx := testContext(t)
	const total = 2000
	rs := open(t, ns)
	recs := make([]stemtype.RevokeRecord, total)
	for i := range recs {
		recs[i] = fullRevoke(ns, fmt.Sprintf("task-%04d", i), int64(1000+i))
	}
	for chunk := range slices.Chunk(recs, 500) {
		if _, err := rs.Upsert(ctx, chunk...); err != nil {
			t.Fatalf("Upsert of %d: %v", len(chunk), err)
		}
	}
	assertEqual(t, "listed records", mustList(ctx, t, open(t, ns), ns), normRevokes(recs))
}

func testRevokesClosedReturnsErrClosed(t *testing.T, open opener[stemdriver.RevokeStore], ns string) {
	ctx := testContext(t)
	rs := open(t, ns)
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
}

// A late upsert of a pruned task, proposing a version at or below the
// pruned record's, does not bring the revoke back (it is returned with
// Version 0 and never listed); a newer one is stored as usual; and the
// tombstone behind it expires after stemdriver.RevokeTombstoneRetention,
// where the store prunes by the caller's clock.
func testRevokesPrunedStayPruned(t *testing.T, open opener[stemdriver.RevokeStore], ns string) {
	ctx := testContext(t)
	rs := open(t, ns)
	at := now()
	pruned := fullRevoke(ns, "pruned", 1000)
	pruned.ExpiresAt = at.Add(-time.Hour)
	kept := fullRevoke(ns, "kept", 1000)
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{pruned, kept}, []stemtype.RevokeRecord{pruned, kept})
	if n, err := rs.Prune(ctx, ns, at); err != nil || n != 1 {
		t.Fatalf("Prune = (%d, %v), want (1, nil)", n, err)
	}
	// The late writes would apply for a day if stored.
	lower := fullRevoke(ns, "pruned", 999)
	same := fullRevoke(ns, "pruned", 1000)
	fresh := fullRevoke(ns, "fresh", 5)
	bumped := fullRevoke(ns, "kept", 3) // a stored record still bumps
	mustUpsert(ctx, t, open(t, ns), []stemtype.RevokeRecord{lower, fresh, same, bumped},
		[]stemtype.RevokeRecord{withVersion(lower, 0), fresh, withVersion(same, 0), withVersion(bumped, 1001)})
	want := normRevokes([]stemtype.RevokeRecord{fresh, withVersion(bumped, 1001)})
	assertEqual(t, "records after the late upserts", mustList(ctx, t, rs, ns), want)
	if _, ok := rs.(stemdriver.RevokeChangeLister); ok {
		got, _ := mustChanges(ctx, t, rs, ns, "")
		assertEqual(t, "changes after the late upserts", got, want)
	}
	// Pruning again keeps the tombstone: the late write is still ignored.
	if _, err := rs.Prune(ctx, ns, at); err != nil {
		t.Fatalf("second Prune: %v", err)
	}
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{lower}, []stemtype.RevokeRecord{withVersion(lower, 0)})
	// A revoke issued later proposes a higher version: it applies.
	newer := fullRevoke(ns, "pruned", 1001)
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{newer}, []stemtype.RevokeRecord{newer})
	assertEqual(t, "records after a newer upsert", mustList(ctx, t, rs, ns),
		normRevokes([]stemtype.RevokeRecord{fresh, withVersion(bumped, 1001), newer}))
	// Once the record is stored again it bumps like any other.
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{lower}, []stemtype.RevokeRecord{withVersion(lower, 1002)})

	// Tombstones expire. Where Prune takes the caller's now, a prune far
	// enough ahead deletes them: a probe record expiring just before tells
	// whether the store used that now or a clock of its own.
	gone := fullRevoke(ns, "gone", 50)
	gone.ExpiresAt = at.Add(-time.Hour)
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{gone}, []stemtype.RevokeRecord{gone})
	if n, err := rs.Prune(ctx, ns, at); err != nil || n != 1 {
		t.Fatalf("Prune of gone = (%d, %v), want (1, nil)", n, err)
	}
	later := at.Add(stemdriver.RevokeTombstoneRetention + 48*time.Hour)
	probe := fullRevoke(ns, "probe", 1)
	probe.ExpiresAt = later.Add(-time.Hour)
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{probe}, []stemtype.RevokeRecord{probe})
	if _, err := rs.Prune(ctx, ns, later); err != nil {
		t.Fatalf("Prune at %v: %v", later, err)
	}
	if slices.ContainsFunc(mustList(ctx, t, rs, ns), func(r stemtype.RevokeRecord) bool { return r.TaskID == "probe" }) {
		t.Logf("%T prunes by a clock of its own: tombstone expiry not checked here", rs)
		return
	}
	if n, err := rs.Prune(ctx, ns, later.Add(stemdriver.RevokeTombstoneRetention)); err != nil {
		t.Fatalf("Prune after the retention: (%d, %v)", n, err)
	}
	old := fullRevoke(ns, "gone", 10)
	mustUpsert(ctx, t, rs, []stemtype.RevokeRecord{old}, []stemtype.RevokeRecord{old})
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

// withVersion returns r with version v, as a store that assigned v stores
// it.
func withVersion(r stemtype.RevokeRecord, v int64) stemtype.RevokeRecord {
	r.Version = v
	return r
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
