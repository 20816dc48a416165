// Package revokecache is a worker's in-memory set of revoke records: the
// records of one namespace, keyed by task id, that the worker consults before
// it starts a task and when a terminate revoke arrives.
//
// The cache applies records monotonically, like every revoke store: a record
// replaces the one held for its task only when its Version is higher. Records
// that have already expired when they are applied are not stored.
//
// Limits, stated honestly:
//   - One Cache holds one namespace. It keys by task id alone and does not
//     check Namespace; the worker feeds it only its own namespace's records.
//   - Times are kept as Unix seconds and nanoseconds, so records come back
//     from Lookup and Snapshot with their times in UTC, without monotonic
//     clock readings: the same instants, not the same time.Time values.
//   - Namespace, Reason, RequestedBy, Terminate and KillAfterMs are interned
//     together with package unique, since the tasks of one revoke call share
//     them; an entry costs 40 bytes plus its task id and its map slot.
//     Interned values stay alive while any record holds them.
//   - When a record that is newer than the held one has already expired, the
//     held record is dropped (the revoke no longer applies), and with it the
//     memory of that task's highest version. A revoke store forgets the same
//     way when it prunes, so the worker is no worse off than the store. For
//     the same reason a held record that has expired is replaced by any
//     record of its task, whatever their versions.
//   - Lookup reports an expired record as absent but does not remove it;
//     Prune does. Prune is cheap: records that expire are filed by the
//     second of their expiry, in buckets ordered by a min-heap, so a prune
//     touches only the buckets that are due (and the one holding now),
//     never the whole set. The price is 16 bytes per expiring record and
//     stale bucket entries for records replaced before they expire, which
//     are dropped when their bucket comes due.
//   - A sync.RWMutex guards one Go map. Measured against sync.Map on a
//     million records, the map under a read lock looked up twice as fast
//     and took less memory; a worker looks up once per task, far below the
//     rate at which the read lock's shared counter would contend.
//
// The benchmarks in this package measure the load time, heap per record,
// lookup and prune cost with a million records.
package revokecache

import (
	"container/heap"
	"strings"
	"sync"
	"time"
	"unique"

	"github.com/stem-go/stem/stemtype"
)

// bucketSeconds is the width of an expiry bucket in seconds.
const bucketSeconds = 1

// entry is one stored record in compact form, 40 bytes: the times as Unix
// seconds and nanoseconds (a zero time.Time round-trips through the pair
// unchanged), and the fields that one revoke call shares across all its
// tasks interned as one handle.
type entry struct {
	version    int64
	issuedSec  int64
	expiresSec int64
	issuedNsec int32
	// expiresNsec is noExpiry when the record never expires.
	expiresNsec int32
	meta        unique.Handle[meta]
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

// Cache is a worker's in-memory revoke set for one namespace. Its methods
// are safe for concurrent use; Lookup takes only a read lock and does not
// allocate.
type Cache struct {
	mu      sync.RWMutex
	entries map[string]entry
	// buckets files the ids of records that expire, by the Unix second
	// (rounded down to bucketSeconds) of their expiry. An id may linger in
	// a bucket after its record was replaced or removed; Prune checks the
	// held entry before it deletes anything.
	buckets map[int64][]string
	// due is a min-heap of the keys of buckets.
	due bucketHeap
}

// New returns an empty Cache.
func New() *Cache {
	return &Cache{
		entries: make(map[string]entry),
		buckets: make(map[int64][]string),
	}
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
		switch c.apply(now, r) {
		case outcomeApplied:
			applied = append(applied, r)
		case outcomeIgnored:
			ignored = append(ignored, r)
		default:
			expired = append(expired, r)
		}
	}
	return applied, ignored, expired
}

// Load is Apply for bulk loads, such as the start-up load and periodic
// re-sync from the revoke store: it applies recs the same way but returns
// only counts, so loading a million records does not also copy them into
// result slices.
func (c *Cache) Load(now time.Time, recs ...stemtype.RevokeRecord) (applied, ignored, expired int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) == 0 && len(recs) > 1024 {
		// A first load: size the map once instead of growing it.
		c.entries = make(map[string]entry, len(recs))
	}
	for _, r := range recs {
		switch c.apply(now, r) {
		case outcomeApplied:
			applied++
		case outcomeIgnored:
			ignored++
		default:
			expired++
		}
	}
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
func (c *Cache) apply(now time.Time, r stemtype.RevokeRecord) outcome {
	held, ok := c.entries[r.TaskID]
	switch {
	case ok && r.Version <= held.version && !held.expiredAt(now):
		return outcomeIgnored
	case r.Expired(now):
		if ok {
			delete(c.entries, r.TaskID)
		}
		return outcomeExpired
	}
	e := pack(r)
	// Clone the id so that the cache does not pin whatever buffer the
	// caller's string points into (assigning to a map replaces the key too).
	id := strings.Clone(r.TaskID)
	c.entries[id] = e
	if e.expires() {
		c.file(id, e.expiresSec)
	}
	return outcomeApplied
}

// Lookup returns the record held for taskID, and false when there is none
// or it has expired at now.
func (c *Cache) Lookup(taskID string, now time.Time) (stemtype.RevokeRecord, bool) {
	c.mu.RLock()
	e, ok := c.entries[taskID]
	c.mu.RUnlock()
	if !ok || e.expiredAt(now) {
		return stemtype.RevokeRecord{}, false
	}
	return e.unpack(taskID), true
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
		ids := c.buckets[key]
		kept := ids[:0]
		for _, id := range ids {
			e, ok := c.entries[id]
			switch {
			case !ok || !e.expires() || bucketKey(e.expiresSec) != key:
				// Stale: the record was removed or replaced, and a
				// replacement that expires is filed in its own bucket.
			case e.expiredAt(now):
				delete(c.entries, id)
				removed++
			default:
				kept = append(kept, id)
			}
		}
		clear(ids[len(kept):]) // let dropped ids be collected
		if len(kept) > 0 {
			// Only the bucket holding now can keep records: every
			// later bucket is not due yet.
			c.buckets[key] = kept
			break
		}
		delete(c.buckets, key)
		heap.Pop(&c.due)
	}
	return removed
}

// Len returns the number of records held, expired ones included until
// pruned.
func (c *Cache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}

// Snapshot returns a copy of every record held, expired ones included until
// pruned, in no particular order.
func (c *Cache) Snapshot() []stemtype.RevokeRecord {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]stemtype.RevokeRecord, 0, len(c.entries))
	for id, e := range c.entries {
		out = append(out, e.unpack(id))
	}
	return out
}

// file adds id to the expiry bucket of expiresSec.
func (c *Cache) file(id string, expiresSec int64) {
	key := bucketKey(expiresSec)
	ids, ok := c.buckets[key]
	if !ok {
		heap.Push(&c.due, key)
	}
	c.buckets[key] = append(ids, id)
}

// bucketKey returns the key of the bucket holding an expiry at sec.
func bucketKey(sec int64) int64 {
	k := sec - sec%bucketSeconds
	if sec < 0 && sec%bucketSeconds != 0 {
		k -= bucketSeconds
	}
	return k
}

func pack(r stemtype.RevokeRecord) entry {
	e := entry{
		version:     r.Version,
		issuedSec:   r.IssuedAt.Unix(),
		issuedNsec:  int32(r.IssuedAt.Nanosecond()),
		expiresSec:  r.ExpiresAt.Unix(),
		expiresNsec: int32(r.ExpiresAt.Nanosecond()),
		meta: unique.Make(meta{
			namespace:   r.Namespace,
			reason:      r.Reason,
			requestedBy: r.RequestedBy,
			killAfterMs: r.KillAfterMs,
			terminate:   r.Terminate,
		}),
	}
	if r.ExpiresAt.IsZero() {
		e.expiresSec, e.expiresNsec = 0, noExpiry
	}
	return e
}

func (e *entry) expires() bool { return e.expiresNsec != noExpiry }

func (e *entry) unpack(taskID string) stemtype.RevokeRecord {
	m := e.meta.Value()
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
