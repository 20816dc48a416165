package revokecache

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// applyAny applies one record of any kind; c.mu must be held for writing.
// Revokes of one task by id go to the compact set, the others (revokes by
// task name) to the kinds map, with the same rules: a record replaces the
// held one of its key only when its version is higher or the held one has
// expired, and a newer record that has already expired removes the held
// one.
func (c *Cache) applyAny(now time.Time, r *stemtype.RevokeRecord) outcome {
	if r.Kind == stemtype.RevokeKindTask {
		return c.apply(now, r)
	}
	held, ok := c.kinds[r.TaskID]
	switch {
	case ok && r.Version <= held.Version && !held.Expired(now):
		return outcomeIgnored
	case r.Expired(now):
		delete(c.kinds, r.TaskID)
		return outcomeExpired
	}
	c.kinds[r.TaskID] = *r
	return outcomeApplied
}

// LookupName returns the revoke of the tasks named name, and false when
// there is none or it has expired at now.
func (c *Cache) LookupName(name string, now time.Time) (stemtype.RevokeRecord, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if len(c.kinds) == 0 {
		return stemtype.RevokeRecord{}, false
	}
	r, ok := c.kinds[stemtype.NameRevokeKey(name)]
	if !ok || r.Expired(now) {
		return stemtype.RevokeRecord{}, false
	}
	return r, true
}

// kindRecords returns the records of the kinds map, newest first (ties by
// key); c.mu must be held.
func (c *Cache) kindRecords() []stemtype.RevokeRecord {
	out := make([]stemtype.RevokeRecord, 0, len(c.kinds))
	for _, r := range c.kinds {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b stemtype.RevokeRecord) int {
		return cmp.Or(cmp.Compare(b.Version, a.Version), strings.Compare(a.TaskID, b.TaskID))
	})
	return out
}

// QueuePaused reports whether queue is paused at now: the newest record
// held for it is a pause (not a resume) that has not expired.
func (c *Cache) QueuePaused(queue string, now time.Time) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if len(c.kinds) == 0 {
		return false
	}
	r, ok := c.kinds[stemtype.QueuePauseKey(queue)]
	return ok && !r.Resumed && !r.Expired(now)
}

// PausedQueues returns the queues paused at now, sorted.
func (c *Cache) PausedQueues(now time.Time) []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := []string{}
	for _, r := range c.kinds {
		if r.Kind == stemtype.RevokeKindQueuePause && !r.Resumed && !r.Expired(now) {
			out = append(out, r.Queue)
		}
	}
	slices.Sort(out)
	return out
}
