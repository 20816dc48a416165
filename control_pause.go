package stem

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// QueuePauseOptions describe a pause or resume of a queue.
type QueuePauseOptions struct {
	// Queue to pause or resume; required.
	Queue string
	// Reason and RequestedBy are recorded with the pause or resume.
	Reason, RequestedBy string
}

// QueuePauseResult is the outcome of PauseQueue or ResumeQueue.
type QueuePauseResult struct {
	// Record is the record stored (stemtype.RevokeKindQueuePause).
	Record stemtype.RevokeRecord
	// Replies are the workers' answers (Decode[stemtype.QueuePauseReply]);
	// nil when publishing failed (the call then returns the error too).
	Replies *Replies
}

// PauseQueue pauses a queue durably: it writes a record to the revoke
// store (stemtype.RevokeKindQueuePause, which never expires) and, only once
// that succeeded, tells the targeted workers, which stop claiming from the
// queue. Workers that miss the command, or start later, learn of it from
// the store (at start-up and every re-sync). Tasks in the queue stay there,
// and tasks already claimed run. A store failure returns an error matching
// ErrStoreUnavailable and publishes nothing (the result is then nil); a
// publish failure returns an error matching ErrBrokerUnavailable with the
// stored record.
func (c *Controller) PauseQueue(ctx context.Context, t Target, o QueuePauseOptions) (*QueuePauseResult, error) {
	return c.setPaused(ctx, t, o, false)
}

// ResumeQueue resumes a paused queue, as PauseQueue pauses it: the record
// it stores replaces the pause (by version) and expires after the
// controller's DefaultExpiry, long after every worker re-synced.
func (c *Controller) ResumeQueue(ctx context.Context, t Target, o QueuePauseOptions) (*QueuePauseResult, error) {
	return c.setPaused(ctx, t, o, true)
}

func (c *Controller) setPaused(ctx context.Context, t Target, o QueuePauseOptions, resume bool) (*QueuePauseResult, error) {
	typ := stemtype.CommandPause
	if resume {
		typ = stemtype.CommandResume
	}
	if c.cfg.Revokes == nil {
		return nil, fmt.Errorf("stem: %s: needs a revoke store (pauses are stored there)", typ)
	}
	if o.Queue == "" {
		return nil, fmt.Errorf("stem: %s: empty queue name", typ)
	}
	now := time.Now().UTC()
	rec := stemtype.RevokeRecord{
		Namespace: c.cfg.Namespace, TaskID: stemtype.QueuePauseKey(o.Queue), Kind: stemtype.RevokeKindQueuePause,
		Queue: o.Queue, Resumed: resume, Version: now.UnixMicro(), IssuedAt: now,
		Reason: o.Reason, RequestedBy: o.RequestedBy,
	}
	if resume {
		rec.ExpiresAt = now.Add(c.cfg.DefaultExpiry)
	}
	if err := rec.Validate(); err != nil {
		return nil, err
	}
	c.signRecord(&rec)
	stored, err := c.cfg.Revokes.Upsert(ctx, rec)
	if err == nil && len(stored) != 1 {
		err = errors.New("the store returned no record")
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s %s: %w", ErrStoreUnavailable, typ, o.Queue, err)
	}
	if stored[0].Version == 0 {
		return nil, fmt.Errorf("stem: %s %s: not stored: the store holds the tombstone of a newer record of the queue (this host's clock may be behind)", typ, o.Queue)
	}
	res := &QueuePauseResult{Record: stored[0]}
	res.Replies, err = c.send(ctx, t, typ, stemtype.QueuePauseRequest{Record: stored[0]})
	return res, err
}
