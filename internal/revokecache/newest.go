package revokecache

import (
	"cmp"
	"container/heap"
	"slices"

	"github.com/stem-go/stem/stemtype"
)

// Newest returns the n newest records held (highest version first, ties by
// task id), expired ones included until pruned; n <= 0 returns every record
// in that order. It unpacks only the records it returns, so that an inspect
// of a worker holding a million revokes costs a pass over the map and a
// heap of n entries, not a copy of the whole set.
func (c *Cache) Newest(n int) []stemtype.RevokeRecord {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if n <= 0 || n > len(c.entries) {
		n = len(c.entries)
	}
	h := make(newestHeap, 0, n)
	for id, e := range c.entries {
		k := newestKey{version: e.version, id: id}
		switch {
		case len(h) < n:
			heap.Push(&h, k)
		case n > 0 && k.newer(h[0]):
			h[0] = k
			heap.Fix(&h, 0)
		}
	}
	slices.SortFunc(h, func(a, b newestKey) int {
		if a.newer(b) {
			return -1
		}
		if b.newer(a) {
			return 1
		}
		return 0
	})
	out := make([]stemtype.RevokeRecord, len(h))
	for i, k := range h {
		e := c.entries[k.id]
		out[i] = e.unpack(k.id)
	}
	return out
}

// newestKey orders records for Newest.
type newestKey struct {
	version int64
	id      string
}

// newer reports whether k sorts before o: a higher version, or the same
// version and a lower task id.
func (k newestKey) newer(o newestKey) bool {
	if c := cmp.Compare(k.version, o.version); c != 0 {
		return c > 0
	}
	return k.id < o.id
}

// newestHeap is a min-heap with the oldest kept key on top, so that a newer
// key replaces it.
type newestHeap []newestKey

func (h newestHeap) Len() int           { return len(h) }
func (h newestHeap) Less(i, j int) bool { return h[j].newer(h[i]) }
func (h newestHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *newestHeap) Push(x any)        { *h = append(*h, x.(newestKey)) }
func (h *newestHeap) Pop() any {
	old := *h
	k := old[len(old)-1]
	*h = old[:len(old)-1]
	return k
}
