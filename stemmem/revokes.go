package stemmem

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// revokeSpace holds the revoke records of every namespace of a Hub, by
// namespace and then task id.
type revokeSpace struct {
	mu   sync.Mutex
	recs map[string]map[string]stemtype.RevokeRecord
	// seq is the last change number handed out per namespace, and
	// changed the change number of each task's stored record, for
	// ListChanges.
	seq     map[string]uint64
	changed map[string]map[string]uint64
	// tombs holds the tombstones of pruned records, by namespace then
	// task id (see stemdriver.RevokeStore).
	tombs map[string]map[string]tombstone
	// epoch tells this space's cursors from those of another Hub.
	epoch string
}

func newRevokeSpace() *revokeSpace {
	return &revokeSpace{
		recs:    make(map[string]map[string]stemtype.RevokeRecord),
		seq:     make(map[string]uint64),
		changed: make(map[string]map[string]uint64),
		tombs:   make(map[string]map[string]tombstone),
		epoch:   strconv.FormatUint(rand.Uint64(), 36),
	}
}

// tombstone is what Prune keeps of a record it deletes: its version, until
// the tombstone itself expires.
type tombstone struct {
	version int64
	until   time.Time
}

// revokes is one revoke store value on a revokeSpace.
type revokes struct {
	space     *revokeSpace
	closed    chan struct{}
	closeOnce sync.Once
}

var (
	_ stemdriver.RevokeStore        = (*revokes)(nil)
	_ stemdriver.RevokeChangeLister = (*revokes)(nil)
)

// Upsert stores every record, each with version max(stored+1, proposed),
// and returns them, in input order, with the versions they were stored
// with; a record that a pruned record's tombstone supersedes is not stored
// and comes back with Version 0. It validates every record before applying any, and applies a call
// as one step under the store's mutex.
func (r *revokes) Upsert(ctx context.Context, recs ...stemtype.RevokeRecord) ([]stemtype.RevokeRecord, error) {
	if isClosed(r.closed) {
		return nil, fmt.Errorf("stem: memory revokes upsert: %w", stemdriver.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for i := range recs {
		if err := recs[i].Validate(); err != nil {
			return nil, fmt.Errorf("stem: memory revokes upsert: record %d: %w", i, err)
		}
	}
	out := slices.Clone(recs)
	r.space.mu.Lock()
	defer r.space.mu.Unlock()
	// Assign every version first, so that a call that cannot be applied
	// whole changes nothing.
	type key struct{ ns, task string }
	var within map[key]int64 // versions assigned earlier in this call
	for i := range out {
		rec := &out[i]
		stored, ok := within[key{rec.Namespace, rec.TaskID}]
		if !ok {
			if cur, held := r.space.recs[rec.Namespace][rec.TaskID]; held {
				stored, ok = cur.Version, true
			}
		}
		if !ok {
			if tomb, dead := r.space.tombs[rec.Namespace][rec.TaskID]; dead && rec.Version <= tomb.version {
				rec.Version = 0 // a late write of a pruned revoke: ignored
				continue
			}
		}
		if ok {
			if stored == math.MaxInt64 {
				return nil, fmt.Errorf("stem: memory revokes upsert: task %q in namespace %q is stored at the highest version, %d", rec.TaskID, rec.Namespace, stored)
			}
			rec.Version = max(rec.Version, stored+1)
		}
		if len(recs) > 1 {
			if within == nil {
				within = make(map[key]int64, len(recs))
			}
			within[key{rec.Namespace, rec.TaskID}] = rec.Version
		}
	}
	for _, rec := range out {
		if rec.Version == 0 {
			continue
		}
		delete(r.space.tombs[rec.Namespace], rec.TaskID)
		ns := r.space.recs[rec.Namespace]
		if ns == nil {
			ns = make(map[string]stemtype.RevokeRecord)
			r.space.recs[rec.Namespace] = ns
		}
		ns[rec.TaskID] = rec
		ch := r.space.changed[rec.Namespace]
		if ch == nil {
			ch = make(map[string]uint64)
			r.space.changed[rec.Namespace] = ch
		}
		r.space.seq[rec.Namespace]++
		ch[rec.TaskID] = r.space.seq[rec.Namespace]
	}
	return out, nil
}

// ListChanges returns the records of namespace upserted since cursor, and
// the next cursor (stemdriver.RevokeChangeLister). A cursor is the Hub's
// epoch and a change number; "", or a cursor of another Hub or one it
// cannot read, lists every record. It finds the changes by a pass over the
// namespace's change numbers, without copying the records that did not
// change: O(records) in memory, which is what a Go map costs anyway.
func (r *revokes) ListChanges(ctx context.Context, namespace, cursor string) ([]stemtype.RevokeRecord, string, error) {
	if isClosed(r.closed) {
		return nil, "", fmt.Errorf("stem: memory revokes list changes: %w", stemdriver.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	var since uint64
	epoch, n, ok := strings.Cut(cursor, ":")
	if ok && epoch == r.space.epoch {
		if since, ok = parseUint(n); !ok {
			since = 0
		}
	}
	r.space.mu.Lock()
	ns := r.space.recs[namespace]
	var out []stemtype.RevokeRecord
	for id, seq := range r.space.changed[namespace] {
		if seq > since {
			out = append(out, ns[id])
		}
	}
	next := r.space.epoch + ":" + strconv.FormatUint(r.space.seq[namespace], 10)
	r.space.mu.Unlock()
	slices.SortFunc(out, func(a, b stemtype.RevokeRecord) int { return cmp.Compare(a.TaskID, b.TaskID) })
	return out, next, nil
}

func parseUint(s string) (uint64, bool) {
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}

// List returns every stored record of namespace, sorted by task id.
func (r *revokes) List(ctx context.Context, namespace string) ([]stemtype.RevokeRecord, error) {
	if isClosed(r.closed) {
		return nil, fmt.Errorf("stem: memory revokes list: %w", stemdriver.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.space.mu.Lock()
	ns := r.space.recs[namespace]
	out := make([]stemtype.RevokeRecord, 0, len(ns))
	for _, rec := range ns {
		out = append(out, rec)
	}
	r.space.mu.Unlock()
	slices.SortFunc(out, func(a, b stemtype.RevokeRecord) int { return cmp.Compare(a.TaskID, b.TaskID) })
	return out, nil
}

// Prune deletes the records of namespace that expired at or before now (the
// memory store has no clock of its own: the caller's now is the clock),
// leaving a tombstone of each, and deletes the tombstones older than
// stemdriver.RevokeTombstoneRetention.
func (r *revokes) Prune(ctx context.Context, namespace string, now time.Time) (int, error) {
	if isClosed(r.closed) {
		return 0, fmt.Errorf("stem: memory revokes prune: %w", stemdriver.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	r.space.mu.Lock()
	defer r.space.mu.Unlock()
	ns := r.space.recs[namespace]
	n := 0
	tombs := r.space.tombs[namespace]
	for id, tomb := range tombs {
		if !now.Before(tomb.until) {
			delete(tombs, id)
		}
	}
	for id, rec := range ns {
		if rec.Expired(now) {
			delete(ns, id)
			delete(r.space.changed[namespace], id)
			if tombs == nil {
				tombs = make(map[string]tombstone)
				r.space.tombs[namespace] = tombs
			}
			tombs[id] = tombstone{version: rec.Version, until: now.Add(stemdriver.RevokeTombstoneRetention)}
			n++
		}
	}
	return n, nil
}

// Close closes r; other values of the same Hub are unaffected. Close is
// idempotent.
func (r *revokes) Close() error {
	r.closeOnce.Do(func() { close(r.closed) })
	return nil
}
