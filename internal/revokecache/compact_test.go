package revokecache

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// model is the reference the cache is checked against: a plain map with the
// semantics documented on Apply, Lookup and Prune.
type model map[string]stemtype.RevokeRecord

func (m model) apply(now time.Time, r stemtype.RevokeRecord) {
	held, ok := m[r.TaskID]
	switch {
	case ok && r.Version <= held.Version && !held.Expired(now):
	case r.Expired(now):
		delete(m, r.TaskID)
	default:
		m[r.TaskID] = r
	}
}

func (m model) prune(now time.Time) int {
	n := 0
	for id, r := range m {
		if r.Expired(now) {
			delete(m, id)
			n++
		}
	}
	return n
}

// TestMatchesModel drives a cache and the model with the same random
// operations on a small id space (so that ids collide, are replaced,
// expire, are removed and come back) and compares them after every step.
// It covers the hash index's deletions, the reuse of free entries, the
// interned fields' reference counts and the rebuilds.
func TestMatchesModel(t *testing.T) {
	// A low floor makes the cache rebuild itself often.
	defer func(floor int) { rebuildFloor = floor }(rebuildFloor)
	rebuildFloor = 256
	rng := rand.New(rand.NewPCG(1, 2))
	c := New()
	m := model{}
	now := t0
	reasons := []string{"a", "b", "c"}
	for step := range 40_000 {
		id := fmt.Sprintf("task-%d", rng.IntN(3000))
		switch op := rng.IntN(10); {
		case op < 6:
			r := stemtype.RevokeRecord{
				Namespace: "stem", TaskID: id, Version: int64(rng.IntN(50)),
				IssuedAt: now, Reason: reasons[rng.IntN(len(reasons))], Terminate: rng.IntN(2) == 0,
			}
			if rng.IntN(3) > 0 {
				r.ExpiresAt = now.Add(time.Duration(rng.IntN(4000)-500) * time.Millisecond)
			}
			m.apply(now, r)
			c.Apply(now, r)
		case op < 7:
			now = now.Add(time.Duration(rng.IntN(1500)) * time.Millisecond)
			if got, want := c.Prune(now), m.prune(now); got != want {
				t.Fatalf("step %d: Prune removed %d, model %d", step, got, want)
			}
		default:
			got, ok := c.Lookup(id, now)
			want, wantOK := m[id]
			if wantOK && want.Expired(now) {
				wantOK = false
			}
			if ok != wantOK || ok && !sameRecord(got, want) {
				t.Fatalf("step %d: Lookup(%s) = %+v, %v; model %+v, %v", step, id, got, ok, want, wantOK)
			}
		}
		if c.Len() != len(m) {
			t.Fatalf("step %d: Len = %d, model %d", step, c.Len(), len(m))
		}
	}
	if c.rebuilds < 10 {
		t.Errorf("the cache rebuilt itself %d times, want the test to cover rebuilds", c.rebuilds)
	}
	snap := c.Snapshot()
	if len(snap) != len(m) {
		t.Fatalf("Snapshot has %d records, model %d", len(snap), len(m))
	}
	for _, r := range snap {
		if !sameRecord(r, m[r.TaskID]) {
			t.Fatalf("Snapshot holds %+v, model %+v", r, m[r.TaskID])
		}
	}
	// Every interned meta in use is referenced by exactly its entries.
	refs := map[uint32]uint32{}
	c.each(func(_ uint32, e *entry) { refs[e.meta]++ })
	if len(refs) != len(c.metaIdx) {
		t.Errorf("%d metas in use, %d interned", len(refs), len(c.metaIdx))
	}
	for i, n := range refs {
		if c.metas[i].refs != n {
			t.Errorf("meta %d: refs %d, used by %d entries", i, c.metas[i].refs, n)
		}
	}
}

// TestShrinkingSetGivesMemoryBack fills the cache, lets nearly everything
// expire and prunes it: the rebuild must leave an arena, entries and index
// sized for what is left, and the survivors must still be found and
// pruned on time.
func TestShrinkingSetGivesMemoryBack(t *testing.T) {
	c := New()
	const n = 100_000
	recs := make([]stemtype.RevokeRecord, n)
	for i := range recs {
		recs[i] = expiring(fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i), 1, t0.Add(time.Minute))
		if i%1000 == 0 {
			recs[i].ExpiresAt = t0.Add(time.Hour)
		}
	}
	c.Load(t0, recs...)
	bigArena, bigChunks, bigIndex := len(c.arena), len(c.chunks), len(c.index)
	if got := c.Prune(t0.Add(time.Minute)); got != n-n/1000 {
		t.Fatalf("Prune removed %d, want %d", got, n-n/1000)
	}
	if len(c.arena) >= bigArena/10 || len(c.chunks) >= bigChunks/10 || len(c.index) >= bigIndex/10 {
		t.Errorf("after pruning 99%%: %d arena chunks (was %d), %d entry chunks (was %d), %d index slots (was %d); want a tenth or less",
			len(c.arena), bigArena, len(c.chunks), bigChunks, len(c.index), bigIndex)
	}
	for i := 0; i < n; i += 1000 {
		if _, ok := c.Lookup(recs[i].TaskID, t0.Add(time.Minute)); !ok {
			t.Fatalf("survivor %s lost in the rebuild", recs[i].TaskID)
		}
	}
	if got := c.Prune(t0.Add(time.Hour)); got != n/1000 {
		t.Errorf("second Prune removed %d, want the %d survivors", got, n/1000)
	}
	if c.Len() != 0 || len(c.metaIdx) != 0 {
		t.Errorf("after pruning all: Len = %d, %d interned metas; want 0, 0", c.Len(), len(c.metaIdx))
	}
}

// TestFootprint holds the heap a loaded cache retains under 100 bytes a
// record, task ids (uuids) included: a million revokes fit in 100 MB.
func TestFootprint(t *testing.T) {
	if testing.Short() {
		t.Skip("loads 250,000 records")
	}
	const n = 250_000
	now := time.Now().UTC()
	before := heapInUse()
	c := New()
	c.Load(now, benchRecords(n, now)...)
	after := heapInUse()
	runtime.KeepAlive(c)
	if c.Len() != n {
		t.Fatalf("Len = %d, want %d", c.Len(), n)
	}
	perRecord := float64(after-before) / n
	t.Logf("%.1f B/record", perRecord)
	if perRecord > 100 {
		t.Errorf("the cache retains %.1f B a record, want at most 100", perRecord)
	}
}
