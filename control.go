package stem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// DefaultRevokeExpiry is how long a revoke applies when the caller sets no
// expiry: long enough to outlive any queued copy and retry of a task, short
// enough that the revoke set stays small. Override it per controller with
// ControllerConfig.DefaultExpiry (the CLI reads STEM_REVOKE_DEFAULT_EXPIRY)
// and per call with RevokeOptions.ExpiresIn.
const DefaultRevokeExpiry = 24 * time.Hour

// ErrStoreUnavailable wraps the error of a revoke that could not be written
// to the revoke store; nothing was published.
var ErrStoreUnavailable = errors.New("stem: revoke store unavailable")

// ErrBrokerUnavailable wraps the error of a control command that could not
// be published.
var ErrBrokerUnavailable = errors.New("stem: broker unavailable")

// ControllerConfig configures a Controller.
type ControllerConfig struct {
	// Namespace whose workers are controlled. Default: "stem".
	Namespace string
	// Control carries commands and replies. Required.
	Control stemdriver.ControlTransport
	// Revokes is written before every revoke is published. Required for
	// Revoke.
	Revokes stemdriver.RevokeStore
	// Results, when set, lets Revoke mark revoked tasks that have not
	// started as cancelled at once.
	Results stemdriver.ResultBackend
	// DefaultExpiry is how long a revoke without RevokeOptions.ExpiresIn
	// applies. Default: DefaultRevokeExpiry.
	DefaultExpiry time.Duration
}

// Controller sends control commands to workers and collects their replies:
// the API behind `stem worker ping|inspect|stats|revoke`.
type Controller struct {
	cfg ControllerConfig
}

// NewController returns a Controller; it fails without a control transport.
func NewController(cfg ControllerConfig) (*Controller, error) {
	if cfg.Control == nil {
		return nil, errors.New("stem: ControllerConfig.Control is nil")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = stemtype.DefaultNamespace
	}
	if cfg.DefaultExpiry < 0 {
		return nil, errors.New("stem: ControllerConfig.DefaultExpiry is negative")
	}
	if cfg.DefaultExpiry == 0 {
		cfg.DefaultExpiry = DefaultRevokeExpiry
	}
	return &Controller{cfg: cfg}, nil
}

// Target selects the workers of one command and how long to wait for them.
type Target struct {
	// Workers are the ids addressed; empty means every worker of the
	// namespace.
	Workers []string
	// Timeout bounds the wait for replies. Default: 5s.
	Timeout time.Duration
}

// Replies are the outcome of one control command.
type Replies struct {
	RequestID string
	// Replies in the order they arrived.
	Replies []stemtype.ControlReply
	// Missing are targeted workers that did not reply in time.
	Missing []string
}

// Errors returns the replies whose status is "error".
func (r *Replies) Errors() []stemtype.ControlReply {
	var out []stemtype.ControlReply
	for _, rep := range r.Replies {
		if rep.Status != stemtype.ReplyOK {
			out = append(out, rep)
		}
	}
	return out
}

// Ping asks workers to answer.
func (c *Controller) Ping(ctx context.Context, t Target) (*Replies, error) {
	return c.Send(ctx, t, stemtype.CommandPing, nil)
}

// Inspect asks workers for their in-flight tasks and, with includeRevoked,
// their revoke sets.
func (c *Controller) Inspect(ctx context.Context, t Target, includeRevoked bool) (*Replies, error) {
	return c.Send(ctx, t, stemtype.CommandInspect, stemtype.InspectRequest{IncludeRevoked: includeRevoked})
}

// Stats asks workers for their counters and queue depths.
func (c *Controller) Stats(ctx context.Context, t Target) (*Replies, error) {
	return c.Send(ctx, t, stemtype.CommandStats, nil)
}

// RevokeOptions describe a revoke.
type RevokeOptions struct {
	// TaskIDs to revoke; at least one.
	TaskIDs []string
	// Terminate asks running copies to stop at their next checkpoint.
	Terminate bool
	// KillAfter, with Terminate, kills an isolated task's child process
	// that has not stopped within this grace period.
	KillAfter time.Duration
	// ExpiresIn is how long the revoke applies. Default: the controller's
	// DefaultExpiry.
	ExpiresIn time.Duration
	// Reason and RequestedBy are recorded with the revoke and in the
	// cancelled task's result metadata.
	Reason, RequestedBy string
}

// Revoke writes one record per task to the revoke store and, only once that
// succeeded, publishes them to workers. A store failure returns an error
// matching ErrStoreUnavailable and publishes nothing. Tasks with a result
// backend entry that has not started are then marked cancelled, as soon as
// the replies are in.
func (c *Controller) Revoke(ctx context.Context, t Target, o RevokeOptions) ([]stemtype.RevokeRecord, *Replies, error) {
	if c.cfg.Revokes == nil {
		return nil, nil, errors.New("stem: revoke needs a revoke store")
	}
	if len(o.TaskIDs) == 0 {
		return nil, nil, errors.New("stem: revoke: no task ids")
	}
	if o.KillAfter < 0 || o.ExpiresIn < 0 {
		return nil, nil, errors.New("stem: revoke: negative duration")
	}
	if o.KillAfter > 0 && !o.Terminate {
		return nil, nil, errors.New("stem: revoke: KillAfter needs Terminate")
	}
	if o.ExpiresIn == 0 {
		o.ExpiresIn = c.cfg.DefaultExpiry
	}
	now := time.Now().UTC()
	// Every record proposes the call's time; the store assigns each one
	// max(stored+1, proposed), and stored carries what it assigned.
	version := now.UnixMicro()
	recs := make([]stemtype.RevokeRecord, len(o.TaskIDs))
	for i, id := range o.TaskIDs {
		recs[i] = stemtype.RevokeRecord{
			Namespace: c.cfg.Namespace, TaskID: id, Version: version, IssuedAt: now,
			Terminate: o.Terminate, KillAfterMs: o.KillAfter.Milliseconds(), Reason: o.Reason,
			RequestedBy: o.RequestedBy, ExpiresAt: now.Add(o.ExpiresIn),
		}
		if err := recs[i].Validate(); err != nil {
			return nil, nil, err
		}
	}
	stored, err := c.cfg.Revokes.Upsert(ctx, recs...)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	}
	replies, err := c.Send(ctx, t, stemtype.CommandRevoke, stemtype.RevokeRequest{Records: stored})
	// Marked only once the workers that answered hold the revoke, so that
	// none of them starts the task after it reads cancelled.
	if err == nil && c.cfg.Results != nil {
		c.markCancelled(ctx, stored, now)
	}
	return stored, replies, err
}

// markMargin is how long a revoke must outlive a queued task's due time for
// Revoke to mark the task cancelled before any worker met it.
const markMargin = time.Minute

// markCancelled records tasks that have not started as cancelled, so their
// status shows the revoke before any worker meets them. Tasks already
// running or finished keep their state: the worker records their outcome.
// Since cancelled is final, a task is only marked when the revoke outlives
// its due time (countdown, ETA or retry backoff) by markMargin; otherwise
// the revoke may expire before a worker meets the task, which then runs,
// and its status says so when it starts.
func (c *Controller) markCancelled(ctx context.Context, recs []stemtype.RevokeRecord, now time.Time) {
	var out []*stemtype.TaskResult
	for _, r := range recs {
		cur, err := c.cfg.Results.Get(ctx, r.TaskID)
		if err != nil || (cur.State != stemtype.StatePending && cur.State != stemtype.StateRetry) {
			continue
		}
		due := now
		if cur.NotBefore.After(due) {
			due = cur.NotBefore
		}
		if !r.ExpiresAt.IsZero() && r.ExpiresAt.Before(due.Add(markMargin)) {
			continue
		}
		cur.State = stemtype.StateCancelled
		cur.Error = &stemtype.TaskError{Kind: "revoked", Message: revokedError(r).Error()}
		cur.Meta = RevokedMeta(r.Reason, r.RequestedBy, r.IssuedAt)
		cur.UpdatedAt, cur.FinishedAt = now, now
		if cp, ok := c.cfg.Results.(stemdriver.ConditionalPutter); ok {
			// Atomic: a state a worker recorded since the read wins.
			_, _ = cp.PutIfState(ctx, cur, stemtype.StatePending, stemtype.StateRetry)
			continue
		}
		out = append(out, cur)
	}
	if len(out) > 0 {
		_ = c.cfg.Results.Put(ctx, out...)
	}
}

// Send publishes a command of type typ with payload to the target and
// collects replies until every targeted worker answered (for a broadcast:
// every worker the transport knows to be live, if it knows any) or the
// timeout passed. A publish failure matches ErrBrokerUnavailable.
func (c *Controller) Send(ctx context.Context, t Target, typ string, payload any) (*Replies, error) {
	timeout := t.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	cmd := stemtype.ControlCommand{RequestID: NewTaskID(), Type: typ, Targets: t.Workers,
		TimeoutMs: timeout.Milliseconds(), Version: stemtype.ControlVersion}
	if len(cmd.Targets) == 0 {
		cmd.Targets = []string{stemtype.BroadcastTarget}
	}
	if payload != nil {
		b, err := json.Marshal(payload)
		if err != nil {
			return nil, fmt.Errorf("stem: encode %s payload: %w", typ, err)
		}
		cmd.Payload = b
	}
	msg, _ := json.Marshal(cmd)

	expect := slices.Clone(t.Workers)
	if len(expect) == 0 {
		if live, err := c.cfg.Control.Workers(ctx); err == nil {
			for _, w := range live {
				expect = append(expect, w.ID)
			}
		}
	}
	if err := c.cfg.Control.Publish(ctx, cmd.Targets, msg); err != nil {
		return nil, fmt.Errorf("%w: publish %s: %w", ErrBrokerUnavailable, typ, err)
	}
	out := &Replies{RequestID: cmd.RequestID}
	seen := map[string]bool{}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := c.cfg.Control.Replies(cctx, cmd.RequestID, func(b []byte) bool {
		var r stemtype.ControlReply
		if json.Unmarshal(b, &r) != nil || r.WorkerID == "" || seen[r.WorkerID] {
			return true
		}
		seen[r.WorkerID] = true
		out.Replies = append(out.Replies, r)
		if len(expect) == 0 {
			return true // unknown live set: wait the whole timeout
		}
		for _, id := range expect {
			if !seen[id] {
				return true
			}
		}
		return false
	})
	if err != nil && cctx.Err() == nil {
		return out, fmt.Errorf("%w: collect replies: %w", ErrBrokerUnavailable, err)
	}
	if err := ctx.Err(); err != nil {
		return out, err // the caller gave up: not the same as a timeout
	}
	for _, id := range t.Workers {
		if !seen[id] {
			out.Missing = append(out.Missing, id)
		}
	}
	return out, nil
}
