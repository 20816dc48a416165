package revokecache

import (
	"cmp"
	"container/heap"
	"slices"

	"github.com/stem-go/stem/stemtype"
)

// Newest returns the n newest records held (highest version first, ties by
// task id), expired ones included until pruned; n <= 0 returns every record
// in that order. Revokes by task name, which are few and apply to many
// tasks, come first, newest first, whatever their versions. It unpacks only the records it returns, so that an inspect
// of a worker holding a million revokes costs a pass over the entries and a
// heap of n entry numbers, not a copy of the whole set.
func (c *Cache) Newest(n int) []stemtype.RevokeRecord {
	c.mu.RLock()
	defer c.mu.RUnlock()
	kinds := c.kindRecords()
	if n > 0 && n <= len(kinds) {
		return kinds[:n]
	}
	if n > 0 {
		n -= len(kinds)
	}
	if n <= 0 || n > c.n {
		n = c.n
	}
	h := newestHeap{s: &c.set, eis: make([]uint32, 0, n)}
	c.each(func(ei uint32, _ *entry) {
		switch {
		case len(h.eis) < n:
			heap.Push(&h, ei)
		case n > 0 && h.newer(ei, h.eis[0]):
			h.eis[0] = ei
			heap.Fix(&h, 0)
		}
	})
	slices.SortFunc(h.eis, func(a, b uint32) int {
		if h.newer(a, b) {
			return -1
		}
		if h.newer(b, a) {
			return 1
		}
		return 0
	})
	out := make([]stemtype.RevokeRecord, len(h.eis))
	for i, ei := range h.eis {
		e := c.entry(ei)
		out[i] = c.unpack(e, c.idString(e.idOff))
	}
	return append(kinds, out...)
}

// newestHeap is a min-heap of entry numbers with the oldest kept record on
// top, so that a newer one replaces it.
type newestHeap struct {
	s   *set
	eis []uint32
}

// newer reports whether entry a sorts before entry b: a higher version, or
// the same version and a lower task id.
func (h *newestHeap) newer(a, b uint32) bool {
	ea, eb := h.s.entry(a), h.s.entry(b)
	if c := cmp.Compare(ea.version, eb.version); c != 0 {
		return c > 0
	}
	return h.s.compareIDs(ea, eb) < 0
}

func (h *newestHeap) Len() int           { return len(h.eis) }
func (h *newestHeap) Less(i, j int) bool { return h.newer(h.eis[j], h.eis[i]) }
func (h *newestHeap) Swap(i, j int)      { h.eis[i], h.eis[j] = h.eis[j], h.eis[i] }
func (h *newestHeap) Push(x any)         { h.eis = append(h.eis, x.(uint32)) }
func (h *newestHeap) Pop() any {
	ei := h.eis[len(h.eis)-1]
	h.eis = h.eis[:len(h.eis)-1]
	return ei
}
