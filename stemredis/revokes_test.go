package stemredis

import (
	"context"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// TestRevokersOnSeparateConnectionsConverge has two stores, each with its
// own connections, write interleaved versions of the same tasks from many
// goroutines. Every Upsert is applied with a version above the stored one,
// so the versions assigned to a task are distinct, and the stored record of
// every task is the one assigned the highest.
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

	var (
		mu       sync.Mutex
		assigned = map[string]map[int64]string{} // task -> version -> reason
	)
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
				if len(got) != 1 || got[0].TaskID != j.task || got[0].Version < j.version || got[0].Reason != rec.Reason {
					t.Errorf("Upsert of version %d of %s returned %+v, want it at a version at least as high", j.version, j.task, got)
					return
				}
				mu.Lock()
				m := assigned[j.task]
				if m == nil {
					m = map[int64]string{}
					assigned[j.task] = m
				}
				if prev, dup := m[got[0].Version]; dup {
					t.Errorf("version %d of %s assigned to %s and %s", got[0].Version, j.task, prev, rec.Reason)
				}
				m[got[0].Version] = rec.Reason
				mu.Unlock()
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
			m := assigned[r.TaskID]
			top := slices.Max(slices.Collect(maps.Keys(m)))
			if r.Version != top || r.Reason != m[top] {
				t.Errorf("task %s stored version %d (reason %q), want the highest assigned, %d (%q)", r.TaskID, r.Version, r.Reason, top, m[top])
			}
		}
	}
}

// TestRevokeVersionsCompareExactly checks versions that a float64 cannot
// tell apart: the script compares and increments them as decimal strings,
// carries included, and refuses to go past the highest int64.
func TestRevokeVersionsCompareExactly(t *testing.T) {
	ns := newNS(t)
	s := openTestRevokes(t)
	ctx := testCtx(t)
	upsert := func(task string, v int64, want int64) {
		t.Helper()
		got, err := s.Upsert(ctx, stemtype.RevokeRecord{Namespace: ns, TaskID: task, Version: v, Reason: fmt.Sprint(v)})
		if err != nil || len(got) != 1 || got[0].Version != want || got[0].Reason != fmt.Sprint(v) {
			t.Fatalf("Upsert of %s at %d = %+v, %v; want it stored at %d", task, v, got, err, want)
		}
	}
	stored := func(task string) stemtype.RevokeRecord {
		t.Helper()
		recs, err := s.List(ctx, ns)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if r.TaskID == task {
				return r
			}
		}
		t.Fatalf("no record of %s", task)
		return stemtype.RevokeRecord{}
	}
	const big = int64(1) << 60 // 2^60 and 2^60+1 are the same float64
	upsert("t", big+1, big+1)
	upsert("t", big, big+2)
	upsert("t", 999, big+3)
	upsert("t", big+1, big+4)
	upsert("t", big+10, big+10)
	if r := stored("t"); r.Version != big+10 || r.Reason != fmt.Sprint(big+10) {
		t.Fatalf("stored %+v, want version %d", r, big+10)
	}
	// Carries: 1999...9 + 1 and 999...9 + 1 (one digit more).
	upsert("c", 1999999999999999999, 1999999999999999999)
	upsert("c", 1, 2000000000000000000)
	upsert("d", 999999999999999999, 999999999999999999)
	upsert("d", 5, 1000000000000000000)
	if r := stored("d"); r.Version != 1000000000000000000 || r.Reason != "5" {
		t.Fatalf("stored %+v, want version 10^18 with the later record", r)
	}
	upsert("top", math.MaxInt64, math.MaxInt64)
	if got, err := s.Upsert(ctx, stemtype.RevokeRecord{Namespace: ns, TaskID: "top", Version: 1, Reason: "past the top"}); err == nil {
		t.Fatalf("Upsert over the highest version = %+v, want an error", got)
	}
	if r := stored("top"); r.Version != math.MaxInt64 || r.Reason != fmt.Sprint(int64(math.MaxInt64)) {
		t.Fatalf("stored %+v after a refused Upsert, want it unchanged", r)
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

// TestRevokePruneUsesServerClock: Prune compares expiry with the Redis
// server's TIME, not with the caller's now, so a worker whose clock runs
// ahead (or behind) prunes exactly what one with a right clock would.
func TestRevokePruneUsesServerClock(t *testing.T) {
	ns := newNS(t)
	s := openTestRevokes(t)
	ctx := testCtx(t)
	rdb := rawClient(t)
	server, err := rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	live := stemtype.RevokeRecord{Namespace: ns, TaskID: "live", Version: 1, ExpiresAt: server.Add(time.Hour)}
	gone := stemtype.RevokeRecord{Namespace: ns, TaskID: "gone", Version: 1, ExpiresAt: server.Add(-time.Hour)}
	if _, err := s.Upsert(ctx, live, gone); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Prune(ctx, ns, server.AddDate(10, 0, 0)); err != nil || n != 1 {
		t.Fatalf("Prune with a clock ten years ahead = (%d, %v), want (1, nil): only the record expired by the server's clock", n, err)
	}
	recs, err := s.List(ctx, ns)
	if err != nil || len(recs) != 1 || recs[0].TaskID != "live" {
		t.Fatalf("List after Prune = (%+v, %v), want the live record only", recs, err)
	}
	// A clock far behind still prunes what expired by the server's.
	expired := stemtype.RevokeRecord{Namespace: ns, TaskID: "expired", Version: 1, ExpiresAt: server.Add(-time.Minute)}
	if _, err := s.Upsert(ctx, expired); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Prune(ctx, ns, time.Unix(0, 0)); err != nil || n != 1 {
		t.Fatalf("Prune with a clock at 1970 = (%d, %v), want (1, nil)", n, err)
	}
}

// TestRevokeUpsertOverCorruptStoredVersion: a stored record whose version
// is not a valid int64 (written by hand or by a foreign writer: too large,
// leading zeros) is one List skips as undecodable. Upsert must treat it as
// absent and store a readable record with the version it returns, rather
// than carry the corrupt digits over (an error after the write, or a
// success whose record no worker can read).
func TestRevokeUpsertOverCorruptStoredVersion(t *testing.T) {
	ns := newNS(t)
	s := openTestRevokes(t)
	ctx := testCtx(t)
	rdb := rawClient(t)
	k := newRevokeKeys(ns)
	corrupt := map[string]string{
		"beyond-int64":  "99999999999999999999",
		"top-plus-one":  "9223372036854775808",
		"leading-zeros": "0007",
	}
	for task, ver := range corrupt {
		raw := `{"namespace":"` + ns + `","taskId":"` + task + `","version":` + ver + `,"issuedAt":"2026-01-01T00:00:00Z","terminate":false}`
		if err := rdb.HSet(ctx, k.records, task, raw).Err(); err != nil {
			t.Fatal(err)
		}
		got, err := s.Upsert(ctx, stemtype.RevokeRecord{Namespace: ns, TaskID: task, Version: 3, Reason: "after corruption"})
		if err != nil || len(got) != 1 {
			t.Errorf("%s: Upsert over stored version %s = %+v, %v; want it stored", task, ver, got, err)
			continue
		}
		recs, err := s.List(ctx, ns)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, r := range recs {
			if r.TaskID == task {
				found = true
				if r.Version != got[0].Version || r.Reason != "after corruption" {
					t.Errorf("%s: listed %+v, want the record Upsert returned (version %d)", task, r, got[0].Version)
				}
			}
		}
		if !found {
			stored, _ := rdb.HGet(ctx, k.records, task).Result()
			t.Errorf("%s: Upsert returned version %d but List does not hold the record (stored %s)", task, got[0].Version, stored)
		}
	}
}

// fiveRevokesListed stores the records old-0 to old-4 (numbers 1 to 5 of
// the change sequence) in a new namespace and returns it, the store, a
// context, a maker of records of the namespace and the cursor of a listing
// of them all.
func fiveRevokesListed(t *testing.T) (string, *Revokes, context.Context, func(id string) stemtype.RevokeRecord, string) {
	t.Helper()
	ns := newNS(t)
	rs := openTestRevokes(t)
	ctx := testCtx(t)
	rec := func(id string) stemtype.RevokeRecord {
		return stemtype.RevokeRecord{Namespace: ns, TaskID: id, Version: 1, IssuedAt: time.Now().UTC()}
	}
	for i := range 5 {
		if _, err := rs.Upsert(ctx, rec(fmt.Sprintf("old-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	_, cursor, err := rs.ListChanges(ctx, ns, "")
	if err != nil {
		t.Fatal(err)
	}
	return ns, rs, ctx, rec, cursor
}

// TestRevokeChangesAfterKeysLost: a worker's cursor outlives the keys it
// counted (a FLUSHDB, a restart without persistence); the sequence then
// starts again from 1 under a new epoch, and the old cursor, whose number
// is higher than the new sequence's, must list every record, not miss
// those numbered at or below it.
func TestRevokeChangesAfterKeysLost(t *testing.T) {
	ns, rs, ctx, rec, cursor := fiveRevokesListed(t)
	k := newRevokeKeys(ns)
	if err := rawClient(t).Del(ctx, k.records, k.expiry, k.changes, k.seq).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Upsert(ctx, rec("new-1"), rec("new-2")); err != nil {
		t.Fatal(err)
	}
	ids, next := changedIDs(ctx, t, rs, ns, cursor)
	if !slices.Equal(ids, []string{"new-1", "new-2"}) {
		t.Errorf("changes since a cursor of the lost sequence = %v, want both new records", ids)
	}
	if next == cursor {
		t.Errorf("the cursor %q was not replaced by one of the new sequence", next)
	}
}

// changedIDs lists the changes of ns since cursor and returns their task
// ids, sorted, and the next cursor.
func changedIDs(ctx context.Context, t *testing.T, rs *Revokes, ns, cursor string) ([]string, string) {
	t.Helper()
	got, next, err := rs.ListChanges(ctx, ns, cursor)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range got {
		ids = append(ids, r.TaskID)
	}
	slices.Sort(ids)
	return ids, next
}

// TestRevokeChangesCursorPastTheSequence: a cursor whose number is past the
// sequence of its own epoch (a replica promoted after a failover that lost
// the last increments: the epoch key came across, the last numbers did not)
// lists every record, not only those numbered above it, which the
// sequence would give again to new changes.
func TestRevokeChangesCursorPastTheSequence(t *testing.T) {
	ns, rs, ctx, rec, cursor := fiveRevokesListed(t)
	// The failover: the replica never received the last two upserts
	// (old-3 and old-4, numbers 4 and 5), so its sequence is at 3.
	k := newRevokeKeys(ns)
	raw := rawClient(t)
	if err := raw.HDel(ctx, k.records, "old-3", "old-4").Err(); err != nil {
		t.Fatal(err)
	}
	if err := raw.ZRem(ctx, k.changes, "old-3", "old-4").Err(); err != nil {
		t.Fatal(err)
	}
	if err := raw.HSet(ctx, k.seq, "seq", 3).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Upsert(ctx, rec("new-1")); err != nil {
		t.Fatal(err)
	}
	ids, next := changedIDs(ctx, t, rs, ns, cursor)
	if !slices.Equal(ids, []string{"new-1", "old-0", "old-1", "old-2"}) {
		t.Errorf("changes since a cursor past the sequence = %v, want every record (new-1 among them)", ids)
	}
	if got, _, err := rs.ListChanges(ctx, ns, next); err != nil || len(got) != 0 {
		t.Errorf("changes since the cursor that listing returned = %d records, %v; want none", len(got), err)
	}
}
