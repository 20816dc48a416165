// Package revokecache is a worker's in-memory set of revoke records: the
// records of one namespace, keyed by task id, that the worker consults before
// it starts a task and when a terminate revoke arrives.
//
// Records of other kinds (stemtype.RevokeRecord.Kind: revokes by task name,
// queue pauses) are few; they live in a plain map beside the compact set,
// under the same rules, and are looked up by name (LookupName) or queue
// (QueuePaused), so a lookup by id costs what it did.
//
// The cache applies records monotonically, like every revoke store: a record
// replaces the one held for its task only when its Version is higher. Records
// that have already expired when they are applied are not stored.
//
// A worker may hold a million revokes, so the set is laid out for memory,
// not as a map of strings to structs (about 197 bytes a record):
//   - Task ids live in an arena of 64 KiB chunks, each id behind a varint
//     length, so an id costs its bytes plus one and no string header.
//   - Records live in chunks of 1024 fixed-size entries of 40 bytes: the
//     version, the two times as Unix seconds and nanoseconds, the id's arena
//     offset and the index of the record's shared fields.
//   - Namespace, Reason, RequestedBy, Terminate and KillAfterMs, which the
//     tasks of one revoke call share, are interned once in a reference-
//     counted table and dropped when no record uses them any more.
//   - An open-addressing hash index (linear probing, backward-shift
//     deletion, at most half full) maps a task id to its entry: 4 to 8
//     bytes a record. A lookup hashes the id with hash/maphash and compares
//     it against the arena bytes, so it allocates nothing.
//
// With uuid task ids a record costs about 90 bytes (BenchmarkLoadMillion
// measures it; TestFootprint holds it under 100). Space freed by removed
// records is reused for new ones (entries) or reclaimed by a rebuild once
// it outweighs the live records (the arena), so a set that shrinks gives
// its memory back.
//
// Limits, stated honestly:
//   - One Cache holds one namespace. It keys by task id alone and does not
//     check Namespace; the worker feeds it only its own namespace's records.
//   - Times are kept as Unix seconds and nanoseconds, so records come back
//     from Lookup and Snapshot with their times in UTC, without monotonic
//     clock readings: the same instants, not the same time.Time values.
//   - At most 2^32-1 records, and 4 GiB of task ids, are held at once.
//   - When a record that is newer than the held one has already expired, the
//     held record is dropped (the revoke no longer applies), and with it the
//     memory of that task's highest version. A revoke store forgets the same
//     way when it prunes, so the worker is no worse off than the store. For
//     the same reason a held record that has expired is replaced by any
//     record of its task, whatever their versions.
//   - Lookup reports an expired record as absent but does not remove it;
//     Prune does. Prune is cheap: records that expire are filed by the
//     minute of their expiry, in buckets ordered by a min-heap, so a prune
//     touches only the buckets that are due (and the one holding now),
//     never the whole set. The price is 4 bytes per expiring record and
//     stale bucket entries for records replaced before they expire, which
//     are dropped when their bucket comes due. (Buckets of a second cost
//     about 60 bytes each, which a million records spread over a day
//     would pay in 86,400 buckets.)
//   - A sync.RWMutex guards the whole set. A worker looks up once per task,
//     far below the rate at which the read lock's shared counter would
//     contend.
//
// The benchmarks in this package measure the load time, heap per record,
// lookup and prune cost with a million records.
package revokecache

import (
	"bytes"
	"container/heap"
	"encoding/binary"
	"hash/maphash"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// bucketSeconds is the width of an expiry bucket in seconds.
const bucketSeconds = 60

const (
	// entryShift sets the entries of a chunk: 1024, 40 KiB.
	entryShift = 10
	entryChunk = 1 << entryShift
	// arenaShift sets the size of an arena chunk: 64 KiB. An offset into
	// the arena is the chunk's number above arenaShift bits and the
	// position within it below; an id too long for a chunk of this size
	// gets a chunk of its own.
	arenaShift = 16
	arenaChunk = 1 << arenaShift
	// minIndex is the smallest hash index, in slots.
	minIndex = 16
)

// rebuildFloor is the garbage, in bytes, below which the cache never
// rebuilds: small sets are not worth compacting. Tests lower it.
var rebuildFloor = 1 << 20

// entry is one stored record in compact form, 40 bytes: the times as Unix
// seconds and nanoseconds (a zero time.Time round-trips through the pair
// unchanged), the task id's place in the arena, and the index of the
// fields that one revoke call shares across all its tasks.
type entry struct {
	version    int64
	issuedSec  int64
	expiresSec int64
	issuedNsec int32
	// expiresNsec is noExpiry when the record never expires.
	expiresNsec int32
	// idOff is where the task id (uvarint length, then bytes) starts in
	// the arena.
	idOff uint32
	// meta indexes Cache.metas; 0 marks a free entry.
	meta uint32
}

// noExpiry marks an entry whose record has the zero ExpiresAt.
const noExpiry = -1

// meta holds the fields of a record that are usually the same for every task
// of one revoke call, so that a million records share a handful of copies.
type meta struct {
	namespace   string
	reason      string
	requestedBy string
	killAfterMs int64
	terminate   bool
}

// metaSlot is an interned meta and the number of entries that use it.
type metaSlot struct {
	m    meta
	refs uint32
}

// Cache is a worker's in-memory revoke set for one namespace. Its methods
// are safe for concurrent use; Lookup takes only a read lock and does not
// allocate.
type Cache struct {
	mu sync.RWMutex
	set
	// kinds holds the records that are not revokes of one task by id
	// (revokes by task name), by store key: they are few, so a map does.
	kinds map[string]stemtype.RevokeRecord
}

// set is the data of a Cache, apart from its lock, so that a rebuild can
// keep the old set while it fills a new one.
type set struct {
	seed maphash.Seed
	// index maps hash slots to entry number+1 (0: empty); its length is a
	// power of two, at least twice the live records.
	index []uint32
	// chunks hold the entries; entry i is chunks[i>>entryShift][i&mask].
	chunks [][]entry
	// top is the number of entries ever handed out (live or free).
	top uint32
	// free lists entry numbers to reuse.
	free []uint32
	// n is the number of live records.
	n int
	// arena holds the task ids; used is the offset of the next free byte
	// in its last chunk, garbage the bytes of ids no longer referenced,
	// and live the bytes of those still referenced.
	arena   [][]byte
	garbage int
	live    int
	// metas is the interned meta table (slot 0 unused), metaIdx its
	// reverse, freeMetas the unused slots.
	metas     []metaSlot
	metaIdx   map[meta]uint32
	freeMetas []uint32
	// buckets files the entry numbers of records that expire, by the Unix
	// second (rounded down to bucketSeconds) of their expiry. A number may
	// linger in a bucket after its record was replaced or removed (and the
	// entry reused); Prune checks the held entry before it deletes anything.
	buckets map[int64][]uint32
	// due is a min-heap of the keys of buckets.
	due bucketHeap
	// rebuilds counts the rebuilds, for tests.
	rebuilds int
}

// New returns an empty Cache.
func New() *Cache {
	c := &Cache{set: set{seed: maphash.MakeSeed()}, kinds: map[string]stemtype.RevokeRecord{}}
	c.reset(0)
	return c
}

// reset empties c, with room in the index for n records.
func (c *set) reset(n int) {
	c.index = make([]uint32, indexSize(n))
	c.chunks, c.top, c.free, c.n = nil, 0, nil, 0
	c.arena, c.garbage, c.live = nil, 0, 0
	c.metas = make([]metaSlot, 1)
	c.metaIdx = make(map[meta]uint32)
	c.freeMetas = nil
	c.buckets = make(map[int64][]uint32)
	c.due = nil
}

// indexSize returns the index length for n records: a power of two, at
// least 2n.
func indexSize(n int) int {
	size := minIndex
	for size < 2*n {
		size <<= 1
	}
	return size
}

// Apply stores each record whose Version is higher than the one held for its
// task, in the order given, and reports what became of each: applied (now
// held), ignored (not newer than the held record) or expired (already
// expired at now, so not stored; a held older record of the same task is
// removed, since the newest word on that task is that the revoke no longer
// applies). Records are compared by version before expiry, so an old record
// that has also expired is ignored while a newer one is held. A held record
// that has expired at now blocks nothing: a store that pruned it assigns
// the task's next revoke its proposed version, which may be lower, and
// that revoke must apply.
func (c *Cache) Apply(now time.Time, recs ...stemtype.RevokeRecord) (applied, ignored, expired []stemtype.RevokeRecord) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range recs {
		switch c.applyAny(now, &r) {
		case outcomeApplied:
			applied = append(applied, r)
		case outcomeIgnored:
			ignored = append(ignored, r)
		default:
			expired = append(expired, r)
		}
	}
	c.maybeRebuild()
	return applied, ignored, expired
}

// Load is Apply for bulk loads, such as the start-up load and periodic
// re-sync from the revoke store: it applies recs the same way but returns
// only counts, so loading a million records does not also copy them into
// result slices.
func (c *Cache) Load(now time.Time, recs ...stemtype.RevokeRecord) (applied, ignored, expired int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if want := indexSize(c.n + len(recs)); want > len(c.index) {
		// Size the index once instead of growing it step by step.
		c.growIndex(want)
	}
	for i := range recs {
		switch c.applyAny(now, &recs[i]) {
		case outcomeApplied:
			applied++
		case outcomeIgnored:
			ignored++
		default:
			expired++
		}
	}
	c.maybeRebuild()
	return applied, ignored, expired
}

// outcome is what apply did with one record.
type outcome int

const (
	outcomeApplied outcome = iota
	outcomeIgnored
	outcomeExpired
)

// apply applies one record; c.mu must be held for writing.
func (c *set) apply(now time.Time, r *stemtype.RevokeRecord) outcome {
	slot, ei, ok := c.find(r.TaskID)
	if ok {
		held := c.entry(ei)
		switch {
		case r.Version <= held.version && !held.expiredAt(now):
			return outcomeIgnored
		case r.Expired(now):
			c.remove(slot, ei)
			return outcomeExpired
		}
		// Replace in place: the task id stays where it is.
		oldMeta, oldBucket, oldExpires := held.meta, bucketKey(held.expiresSec), held.expires()
		c.pack(held, r)
		c.release(oldMeta)
		if held.expires() && (!oldExpires || bucketKey(held.expiresSec) != oldBucket) {
			c.file(ei, held.expiresSec)
		}
		return outcomeApplied
	}
	if r.Expired(now) {
		return outcomeExpired
	}
	if uint64(c.n) >= math.MaxUint32-1 {
		panic("revokecache: more than 2^32-2 records")
	}
	if 2*(c.n+1) > len(c.index) {
		c.growIndex(2 * len(c.index))
		slot, _, _ = c.find(r.TaskID)
	}
	ei = c.newEntry()
	e := c.entry(ei)
	e.idOff = c.storeID(r.TaskID)
	c.pack(e, r)
	c.index[slot] = ei + 1
	c.n++
	if e.expires() {
		c.file(ei, e.expiresSec)
	}
	return outcomeApplied
}

// Lookup returns the record held for taskID, and false when there is none
// or it has expired at now.
func (c *Cache) Lookup(taskID string, now time.Time) (stemtype.RevokeRecord, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	_, ei, ok := c.find(taskID)
	if !ok {
		return stemtype.RevokeRecord{}, false
	}
	e := c.entry(ei)
	if e.expiredAt(now) {
		return stemtype.RevokeRecord{}, false
	}
	return c.unpack(e, taskID), true
}

// Prune removes the records that expired at or before now and returns how
// many it removed. It visits only the expiry buckets that are due.
func (c *Cache) Prune(now time.Time) int {
	nowSec := now.Unix()
	c.mu.Lock()
	defer c.mu.Unlock()
	removed := 0
	for len(c.due) > 0 && c.due[0] <= nowSec {
		key := c.due[0]
		eis := c.buckets[key]
		kept := eis[:0]
		for _, ei := range eis {
			e := c.entry(ei)
			switch {
			case e.meta == 0 || !e.expires() || bucketKey(e.expiresSec) != key:
				// Stale: the record was removed or replaced, and a
				// replacement that expires is filed in its own bucket.
			case e.expiredAt(now):
				c.remove(c.slotOf(ei), ei)
				removed++
			default:
				kept = append(kept, ei)
			}
		}
		if len(kept) > 0 {
			// Only the bucket holding now can keep records: every
			// later bucket is not due yet.
			c.buckets[key] = kept
			break
		}
		delete(c.buckets, key)
		heap.Pop(&c.due)
	}
	for key, r := range c.kinds {
		if r.Expired(now) {
			delete(c.kinds, key)
			removed++
		}
	}
	c.maybeRebuild()
	return removed
}

// Len returns the number of records held, expired ones included until
// pruned.
func (c *Cache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.n + len(c.kinds)
}

// Snapshot returns a copy of every record held, expired ones included until
// pruned, in no particular order.
func (c *Cache) Snapshot() []stemtype.RevokeRecord {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]stemtype.RevokeRecord, 0, c.n+len(c.kinds))
	for _, r := range c.kinds {
		out = append(out, r)
	}
	c.each(func(_ uint32, e *entry) {
		out = append(out, c.unpack(e, c.idString(e.idOff)))
	})
	return out
}

// each calls fn with every live entry.
func (c *set) each(fn func(ei uint32, e *entry)) {
	for ei := range c.top {
		if e := c.entry(ei); e.meta != 0 {
			fn(ei, e)
		}
	}
}

// entry returns entry ei.
func (c *set) entry(ei uint32) *entry {
	return &c.chunks[ei>>entryShift][ei&(entryChunk-1)]
}

// newEntry returns the number of a free entry, reusing a removed one when
// there is one.
func (c *set) newEntry() uint32 {
	if n := len(c.free); n > 0 {
		ei := c.free[n-1]
		c.free = c.free[:n-1]
		return ei
	}
	ei := c.top
	if int(ei>>entryShift) == len(c.chunks) {
		c.chunks = append(c.chunks, make([]entry, entryChunk))
	}
	c.top++
	return ei
}

// find returns the index slot of taskID and its entry number with true, or
// the empty slot where it would go with false.
func (c *set) find(taskID string) (slot int, ei uint32, ok bool) {
	mask := len(c.index) - 1
	for i := int(maphash.String(c.seed, taskID)) & mask; ; i = (i + 1) & mask {
		v := c.index[i]
		if v == 0 {
			return i, 0, false
		}
		if string(c.idBytes(c.entry(v-1).idOff)) == taskID {
			return i, v - 1, true
		}
	}
}

// slotOf returns the index slot that holds live entry ei.
func (c *set) slotOf(ei uint32) int {
	mask := len(c.index) - 1
	i := int(maphash.Bytes(c.seed, c.idBytes(c.entry(ei).idOff))) & mask
	for c.index[i] != ei+1 {
		i = (i + 1) & mask
	}
	return i
}

// remove deletes the record of entry ei, held at index slot slot.
func (c *set) remove(slot int, ei uint32) {
	e := c.entry(ei)
	n := len(c.idBytes(e.idOff))
	size := n + uvarintLen(n)
	c.garbage += size
	c.live -= size
	c.release(e.meta)
	*e = entry{}
	c.free = append(c.free, ei)
	c.n--
	// Backward-shift deletion: move later entries of the probe run into
	// the gap, so that no lookup stops early at it.
	mask := len(c.index) - 1
	gap := slot
	for j := (gap + 1) & mask; ; j = (j + 1) & mask {
		v := c.index[j]
		if v == 0 {
			break
		}
		home := int(maphash.Bytes(c.seed, c.idBytes(c.entry(v-1).idOff))) & mask
		// The entry at j may fill the gap unless its home lies
		// cyclically in (gap, j].
		if (j > gap && (home <= gap || home > j)) || (j < gap && home <= gap && home > j) {
			c.index[gap] = v
			gap = j
		}
	}
	c.index[gap] = 0
}

// growIndex rebuilds the hash index with size slots.
func (c *set) growIndex(size int) {
	c.index = make([]uint32, size)
	mask := size - 1
	c.each(func(ei uint32, e *entry) {
		i := int(maphash.Bytes(c.seed, c.idBytes(e.idOff))) & mask
		for c.index[i] != 0 {
			i = (i + 1) & mask
		}
		c.index[i] = ei + 1
	})
}

// maybeRebuild compacts the set once removed records hold more memory than
// live ones: ids no longer referenced (the arena never reuses space) or
// free entries. The cost, a pass over the live records, is paid for by the
// removals that made the garbage.
func (c *set) maybeRebuild() {
	freeBytes := len(c.free) * 40
	if (c.garbage < rebuildFloor || c.garbage <= c.live) && (freeBytes < rebuildFloor || len(c.free) <= c.n) {
		return
	}
	old := *c
	c.reset(c.n)
	c.rebuilds = old.rebuilds + 1
	c.metas, c.metaIdx, c.freeMetas = old.metas, old.metaIdx, old.freeMetas
	mask := len(c.index) - 1
	old.each(func(_ uint32, oe *entry) {
		id := old.idBytes(oe.idOff)
		ei := c.newEntry()
		e := c.entry(ei)
		*e = *oe
		e.idOff = c.storeIDBytes(id)
		i := int(maphash.Bytes(c.seed, id)) & mask
		for c.index[i] != 0 {
			i = (i + 1) & mask
		}
		c.index[i] = ei + 1
		c.n++
		if e.expires() {
			c.file(ei, e.expiresSec)
		}
	})
}

// storeID copies id into the arena and returns its offset.
func (c *set) storeID(id string) uint32 {
	var hdr [binary.MaxVarintLen64]byte
	h := binary.PutUvarint(hdr[:], uint64(len(id)))
	off, buf := c.reserve(h + len(id))
	copy(buf, hdr[:h])
	copy(buf[h:], id)
	return off
}

// storeIDBytes is storeID for an id held as bytes.
func (c *set) storeIDBytes(id []byte) uint32 {
	var hdr [binary.MaxVarintLen64]byte
	h := binary.PutUvarint(hdr[:], uint64(len(id)))
	off, buf := c.reserve(h + len(id))
	copy(buf, hdr[:h])
	copy(buf[h:], id)
	return off
}

// reserve returns the offset of, and a slice over, size free arena bytes.
func (c *set) reserve(size int) (uint32, []byte) {
	c.live += size
	last := len(c.arena) - 1
	if last < 0 || len(c.arena[last])+size > cap(c.arena[last]) {
		if len(c.arena) >= 1<<(32-arenaShift) {
			panic("revokecache: task ids exceed 4 GiB")
		}
		c.arena = append(c.arena, make([]byte, 0, max(size, arenaChunk)))
		last++
	}
	chunk := c.arena[last]
	pos := len(chunk)
	c.arena[last] = chunk[:pos+size]
	return uint32(last)<<arenaShift | uint32(pos), c.arena[last][pos : pos+size]
}

// idBytes returns the task id stored at off.
func (c *set) idBytes(off uint32) []byte {
	chunk := c.arena[off>>arenaShift]
	pos := int(off & (arenaChunk - 1))
	n, h := binary.Uvarint(chunk[pos:])
	return chunk[pos+h : pos+h+int(n)]
}

// idString returns the task id stored at off as a new string.
func (c *set) idString(off uint32) string {
	return string(c.idBytes(off))
}

func uvarintLen(n int) int {
	var hdr [binary.MaxVarintLen64]byte
	return binary.PutUvarint(hdr[:], uint64(n))
}

// intern returns the index of m in the meta table, adding it (with its
// strings cloned, so that the cache pins no decoding buffer) when it is
// new, and counts one more user.
func (c *set) intern(m meta) uint32 {
	if i, ok := c.metaIdx[m]; ok {
		c.metas[i].refs++
		return i
	}
	m.namespace = strings.Clone(m.namespace)
	m.reason = strings.Clone(m.reason)
	m.requestedBy = strings.Clone(m.requestedBy)
	var i uint32
	if n := len(c.freeMetas); n > 0 {
		i = c.freeMetas[n-1]
		c.freeMetas = c.freeMetas[:n-1]
		c.metas[i] = metaSlot{m: m, refs: 1}
	} else {
		i = uint32(len(c.metas))
		c.metas = append(c.metas, metaSlot{m: m, refs: 1})
	}
	c.metaIdx[m] = i
	return i
}

// release counts one user of meta i fewer, dropping it with the last.
func (c *set) release(i uint32) {
	s := &c.metas[i]
	if s.refs--; s.refs == 0 {
		delete(c.metaIdx, s.m)
		*s = metaSlot{}
		c.freeMetas = append(c.freeMetas, i)
	}
}

// file adds entry ei to the expiry bucket of expiresSec.
func (c *set) file(ei uint32, expiresSec int64) {
	key := bucketKey(expiresSec)
	eis, ok := c.buckets[key]
	if !ok {
		heap.Push(&c.due, key)
	}
	c.buckets[key] = append(eis, ei)
}

// bucketKey returns the key of the bucket holding an expiry at sec.
func bucketKey(sec int64) int64 {
	k := sec - sec%bucketSeconds
	if sec < 0 && sec%bucketSeconds != 0 {
		k -= bucketSeconds
	}
	return k
}

// pack writes r's fields, all but the task id, into e, taking a reference
// to r's interned meta.
func (c *set) pack(e *entry, r *stemtype.RevokeRecord) {
	e.version = r.Version
	e.issuedSec = r.IssuedAt.Unix()
	e.issuedNsec = int32(r.IssuedAt.Nanosecond())
	e.expiresSec = r.ExpiresAt.Unix()
	e.expiresNsec = int32(r.ExpiresAt.Nanosecond())
	if r.ExpiresAt.IsZero() {
		e.expiresSec, e.expiresNsec = 0, noExpiry
	}
	e.meta = c.intern(meta{
		namespace:   r.Namespace,
		reason:      r.Reason,
		requestedBy: r.RequestedBy,
		killAfterMs: r.KillAfterMs,
		terminate:   r.Terminate,
	})
}

func (e *entry) expires() bool { return e.expiresNsec != noExpiry }

func (c *set) unpack(e *entry, taskID string) stemtype.RevokeRecord {
	m := &c.metas[e.meta].m
	r := stemtype.RevokeRecord{
		Namespace:   m.namespace,
		TaskID:      taskID,
		Version:     e.version,
		IssuedAt:    time.Unix(e.issuedSec, int64(e.issuedNsec)).UTC(),
		Terminate:   m.terminate,
		KillAfterMs: m.killAfterMs,
		Reason:      m.reason,
		RequestedBy: m.requestedBy,
	}
	if e.expires() {
		r.ExpiresAt = time.Unix(e.expiresSec, int64(e.expiresNsec)).UTC()
	}
	return r
}

// compareIDs orders entries a and b by task id.
func (c *set) compareIDs(a, b *entry) int {
	return bytes.Compare(c.idBytes(a.idOff), c.idBytes(b.idOff))
}

// expiredAt is RevokeRecord.Expired on the compact form: true when the
// record expires and now is not before its expiry.
func (e *entry) expiredAt(now time.Time) bool {
	if !e.expires() {
		return false
	}
	s := now.Unix()
	return s > e.expiresSec || s == e.expiresSec && int32(now.Nanosecond()) >= e.expiresNsec
}

// bucketHeap is a min-heap of bucket keys for container/heap.
type bucketHeap []int64

func (h bucketHeap) Len() int           { return len(h) }
func (h bucketHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h bucketHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *bucketHeap) Push(x any)        { *h = append(*h, x.(int64)) }
func (h *bucketHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
