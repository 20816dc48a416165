package stem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
	// Logger receives the controller's warnings: live workers that could
	// not be listed, revoked tasks that could not be marked cancelled.
	// Default: slog.Default().
	Logger *slog.Logger
	// SigningKeys, when set, sign every command and every revoke record
	// (the first key), for workers with the same keys (see
	// docs/signing.md). Optional.
	SigningKeys *SigningKeys
}

// Controller sends control commands to workers and collects their replies:
// the API behind `stem worker ping|inspect|stats|revoke`. It is safe for
// concurrent use.
//
// Each call publishes its command to the targeted workers and waits until
// every live one answered (for a broadcast: every live worker of the
// namespace) or Target.Timeout passed. It does not wait for a worker that
// cannot answer: a targeted worker that is not live (has not announced
// its presence) is reported in Replies.Missing and Replies.NotLive at once,
// and a call with no live worker to wait for returns as soon as the
// command is published. The command reaches every target all the same, so
// a worker that is starting still receives it. A publish failure matches
// ErrBrokerUnavailable; a cancelled ctx returns its error with the replies
// collected so far.
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
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Controller{cfg: cfg}, nil
}

// Target selects the workers of one command and how long to wait for them.
type Target struct {
	// Workers are the ids addressed; empty means every worker of the
	// namespace.
	Workers []string
	// Timeout bounds the wait for replies from live workers. Default: 5s.
	Timeout time.Duration
}

// Replies are the outcome of one control command. Read each worker's
// typed answer with Decode.
type Replies struct {
	// RequestID identifies the command; replies carry it.
	RequestID string
	// Replies in the order they arrived.
	Replies []stemtype.ControlReply
	// Missing are the workers that were expected to reply and did not,
	// sorted: every targeted worker without a reply, and for a broadcast
	// every live worker without one. NotLive is part of it.
	Missing []string
	// NotLive are the targeted workers that were not live when the command
	// was sent, sorted: they were reported missing without being waited
	// for. Empty when the live workers could not be listed.
	NotLive []string
	// Live are the workers of the namespace that were live (had announced
	// their presence) when the command was sent, sorted; nil when they
	// could not be listed (see PresenceErr). An empty, non-nil Live after
	// a broadcast means no worker was live: the call returned at once.
	Live []string
	// PresenceErr is why the live workers could not be listed. The call
	// then fell back to waiting for every targeted worker, and for a
	// broadcast to waiting out the whole timeout, and logged the error.
	PresenceErr error
}

// Ping asks workers to answer; read the replies with
// Decode[stemtype.PingReply].
func (c *Controller) Ping(ctx context.Context, t Target) (*Replies, error) {
	return c.send(ctx, t, stemtype.CommandPing, nil)
}

// Inspect asks workers for their in-flight tasks and, when
// req.IncludeRevoked is set, the newest req.Limit records of their revoke
// sets (every record when Limit is zero; a worker may hold a million, so
// set a Limit). Every reply counts the records its worker holds in
// RevokedTotal. Read the replies with Decode[stemtype.InspectReply]. A
// negative Limit is an error and sends nothing.
func (c *Controller) Inspect(ctx context.Context, t Target, req stemtype.InspectRequest) (*Replies, error) {
	if req.Limit < 0 {
		return nil, fmt.Errorf("stem: inspect: negative limit %d", req.Limit)
	}
	return c.send(ctx, t, stemtype.CommandInspect, req)
}

// Stats asks workers for their counters and queue depths; read the replies
// with Decode[stemtype.StatsReply].
func (c *Controller) Stats(ctx context.Context, t Target) (*Replies, error) {
	return c.send(ctx, t, stemtype.CommandStats, nil)
}

// Shutdown asks workers to stop, in mode stemtype.ShutdownWarm (""),
// ShutdownSoft or ShutdownHard; each replies (Decode[stemtype.ShutdownReply])
// before it starts to stop. An unknown mode is an error and sends nothing.
func (c *Controller) Shutdown(ctx context.Context, t Target, mode string) (*Replies, error) {
	if mode == "" {
		mode = stemtype.ShutdownWarm
	}
	if !validShutdownMode(mode) {
		return nil, fmt.Errorf("stem: shutdown: unknown mode %q (want warm, soft or hard)", mode)
	}
	o, err := c.prepare(t, stemtype.CommandShutdown, stemtype.ShutdownRequest{Mode: mode})
	if err != nil {
		return nil, err
	}
	// A worker stops as soon as it replied and withdraws its presence, so
	// it may be gone from the live set that deliver reads after the
	// publish. The workers live before the publish are listed too, and the
	// replies of those gone since are collected.
	var before []string
	r, err := c.deliver(ctx, o, func(ctx context.Context) error {
		if ws, err := c.cfg.Control.Workers(ctx); err == nil {
			for _, w := range ws {
				if o.broadcast || slices.Contains(o.targets, w.ID) {
					before = append(before, w.ID)
				}
			}
		}
		return c.publish(ctx, o)
	})
	if err != nil || r.Live == nil {
		return r, err
	}
	gone := map[string]bool{}
	for _, id := range before {
		if _, live := slices.BinarySearch(r.Live, id); !live && !slices.ContainsFunc(r.Replies, func(rep stemtype.ControlReply) bool { return rep.WorkerID == id }) {
			gone[id] = true
		}
	}
	if len(gone) == 0 {
		return r, nil
	}
	cctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	err = c.cfg.Control.Replies(cctx, o.cmd.RequestID, func(b []byte) bool {
		var rep stemtype.ControlReply
		if json.Unmarshal(b, &rep) != nil || !gone[rep.WorkerID] {
			return true
		}
		delete(gone, rep.WorkerID)
		r.Replies = append(r.Replies, rep)
		r.Missing = slices.DeleteFunc(r.Missing, func(id string) bool { return id == rep.WorkerID })
		r.NotLive = slices.DeleteFunc(r.NotLive, func(id string) bool { return id == rep.WorkerID })
		return len(gone) > 0
	})
	if err != nil && cctx.Err() == nil {
		return r, fmt.Errorf("%w: collect replies: %w", ErrBrokerUnavailable, err)
	}
	for id := range gone {
		if o.broadcast && !slices.Contains(r.Missing, id) {
			r.Missing = append(r.Missing, id) // live at the publish, never answered
		}
	}
	slices.Sort(r.Missing)
	return r, ctx.Err()
}

func validShutdownMode(mode string) bool {
	switch mode {
	case stemtype.ShutdownWarm, stemtype.ShutdownSoft, stemtype.ShutdownHard:
		return true
	}
	return false
}

// RevokeOptions describe a revoke.
type RevokeOptions struct {
	// TaskIDs to revoke; at least one id or name.
	TaskIDs []string
	// TaskNames are task names to revoke: every task of such a name that
	// a worker meets while the revoke holds (until it expires), whenever it
	// was enqueued, never starts, and with Terminate a running one is
	// cancelled. Each is stored as its own record, apart from revokes by
	// id (stemtype.RevokeKindName).
	TaskNames []string
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

// RevokeResult is the outcome of Revoke.
type RevokeResult struct {
	// Records are the records stored, in the order of the task ids, then
	// of the task names.
	Records []stemtype.RevokeRecord
	// Replies are the workers' answers to the published revoke; nil when
	// publishing failed (Revoke then returns the error too).
	Replies *Replies
	// Checked reports whether the result backend was asked which tasks it
	// knows: false without a result backend, or when asking it failed
	// (then MarkErr says why). Unchecked, nothing is known either way.
	Checked bool
	// Unknown are the revoked task ids the result backend holds no result
	// of, in the order given, when Checked (then it is non-nil): a mistyped
	// or shortened id, a task whose result expired, or a task of a producer
	// that records no results. Their revokes are stored and published all
	// the same.
	Unknown []string
	// MarkErr is what went wrong while looking the tasks up in the result
	// backend or marking those that had not started as cancelled. It is a
	// warning: the revoke is stored and published, and workers record the
	// cancellation when they meet the tasks.
	MarkErr error
}

// Revoke writes one record per task id and per task name
// (RevokeOptions.TaskNames) to the revoke store and, only once that
// succeeded, publishes them to the targeted workers, which skip a revoked
// task they have not started and, with Terminate, cancel one that runs. A
// store failure returns an error matching ErrStoreUnavailable and publishes
// nothing (the result is then nil); a publish failure returns an error
// matching ErrBrokerUnavailable together with the stored records.
//
// With a result backend, Revoke looks the tasks up with one call and
// reports the ids it does not know (RevokeResult.Unknown), and marks the
// tasks that have not started as cancelled as soon as the replies are in,
// when every live worker answered and none holds the task (otherwise the
// workers record the cancellation when they meet the tasks). A failure
// there is a warning in RevokeResult.MarkErr, also logged, not an error:
// the revoke itself holds.
func (c *Controller) Revoke(ctx context.Context, t Target, o RevokeOptions) (*RevokeResult, error) {
	var res RevokeResult
	recs, replies, err := c.revoke(ctx, t, o, &res)
	if res.MarkErr != nil {
		c.cfg.Logger.WarnContext(ctx, "revoke stored and published, but the result backend was not updated",
			"namespace", c.cfg.Namespace, "err", res.MarkErr)
	}
	if recs == nil {
		return nil, err
	}
	res.Records, res.Replies = recs, replies
	return &res, err
}

// revoke does the work of Revoke, recording in res what the
// result backend knew of the tasks.
func (c *Controller) revoke(ctx context.Context, t Target, o RevokeOptions, res *RevokeResult) ([]stemtype.RevokeRecord, *Replies, error) {
	if c.cfg.Revokes == nil {
		return nil, nil, errors.New("stem: revoke needs a revoke store")
	}
	if len(o.TaskIDs) == 0 && len(o.TaskNames) == 0 {
		return nil, nil, errors.New("stem: revoke: no task ids or names")
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
	recs := make([]stemtype.RevokeRecord, len(o.TaskIDs)+len(o.TaskNames))
	for i := range recs {
		recs[i] = stemtype.RevokeRecord{
			Namespace: c.cfg.Namespace, Version: version, IssuedAt: now,
			Terminate: o.Terminate, KillAfterMs: o.KillAfter.Milliseconds(), Reason: o.Reason,
			RequestedBy: o.RequestedBy, ExpiresAt: now.Add(o.ExpiresIn),
		}
		if i < len(o.TaskIDs) {
			recs[i].TaskID = o.TaskIDs[i]
		} else {
			name := o.TaskNames[i-len(o.TaskIDs)]
			if name == "" {
				return nil, nil, errors.New("stem: revoke: empty task name")
			}
			recs[i].Kind, recs[i].Name, recs[i].TaskID = stemtype.RevokeKindName, name, stemtype.NameRevokeKey(name)
		}
		if err := recs[i].Validate(); err != nil {
			return nil, nil, err
		}
		c.signRecord(&recs[i])
	}
	stored, replies, err := c.storeAndSend(ctx, t, recs)
	if stored == nil {
		return nil, nil, err
	}
	// Marked only once the workers that answered hold the revoke, so that
	// none of them starts the task after it reads cancelled, and only the
	// tasks no worker holds (see markable).
	// Revokes by name are left out: they name no task to look up.
	if byID := storedOnly(stored[:len(o.TaskIDs)]); err == nil && c.cfg.Results != nil && len(byID) > 0 {
		c.checkResults(ctx, byID, now, res, markable(replies))
	}
	return stored, replies, err
}

// storeAndSend stores the revoke records and sends the workers the
// command carrying them as stored. Where the control transport can publish
// with the revoke store's write (a stemdriver.RevokePublisher), the command
// built from the records as proposed goes out in that write, when the
// store kept every proposed version (it usually does: the versions are the
// call's time), one round trip sooner; otherwise it is published after.
// stored is nil when nothing was stored (err matches
// ErrStoreUnavailable).
func (c *Controller) storeAndSend(ctx context.Context, t Target, recs []stemtype.RevokeRecord) (stored []stemtype.RevokeRecord, _ *Replies, _ error) {
	rp, ok := c.cfg.Control.(stemdriver.RevokePublisher)
	if !ok || !rp.PublishesWith(c.cfg.Revokes) {
		stored, err := c.cfg.Revokes.Upsert(ctx, recs...)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
		}
		replies, err := c.send(ctx, t, stemtype.CommandRevoke, stemtype.RevokeRequest{Records: storedOnly(stored)})
		return stored, replies, err
	}
	o, err := c.prepare(t, stemtype.CommandRevoke, stemtype.RevokeRequest{Records: recs})
	if err != nil {
		return nil, nil, err
	}
	replies, err := c.deliver(ctx, o, func(ctx context.Context) error {
		s, published, err := rp.UpsertPublish(ctx, c.cfg.Revokes, recs, o.cmd.Targets, o.msg)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
		}
		stored = s
		if published {
			return nil
		}
		if err := o.setPayload(stemtype.RevokeRequest{Records: storedOnly(stored)}); err != nil {
			return err
		}
		return c.publish(ctx, o)
	})
	return stored, replies, err
}

// storedOnly returns the records of recs that the revoke store stored:
// those with a version. A store returns Version 0 for a late record of a
// task whose newer record was pruned (stemdriver.RevokeStore), which must
// not reach the workers.
func storedOnly(recs []stemtype.RevokeRecord) []stemtype.RevokeRecord {
	if !slices.ContainsFunc(recs, func(r stemtype.RevokeRecord) bool { return r.Version == 0 }) {
		return recs
	}
	return slices.DeleteFunc(slices.Clone(recs), func(r stemtype.RevokeRecord) bool { return r.Version == 0 })
}

// markable returns which of a revoke's tasks may be marked cancelled in
// the result backend once its replies are in. A worker that holds a task
// records its state itself, and the backend may not show the task's
// start yet (the worker's writes are batched, a backend may be slow):
// marking such a task cancelled would keep its real outcome from ever
// being recorded, since a final state is final. So nothing is marked
// unless every live worker answered the revoke (a silent one, or one the
// command did not target, may hold the task), and no task a worker
// reported holding (stemtype.RevokeReply.Held) is.
func markable(r *Replies) func(id string) bool {
	never := func(string) bool { return false }
	if r == nil || r.PresenceErr != nil || r.Live == nil {
		return never
	}
	held := map[string]bool{}
	answered := map[string]bool{}
	for _, rep := range Decode[stemtype.RevokeReply](r) {
		if rep.Err != nil {
			continue
		}
		answered[rep.WorkerID] = true
		for _, id := range rep.Payload.Held {
			held[id] = true
		}
	}
	for _, id := range r.Live {
		if !answered[id] {
			return never
		}
	}
	return func(id string) bool { return !held[id] }
}

// checkResults looks the revoked tasks up in the result backend with one
// call, records in res which ones it does not know, and marks those that
// have not started, and that mark allows, as cancelled.
func (c *Controller) checkResults(ctx context.Context, recs []stemtype.RevokeRecord, now time.Time, res *RevokeResult, mark func(id string) bool) {
	ids := make([]string, len(recs))
	for i, r := range recs {
		ids[i] = r.TaskID
	}
	cur, err := c.cfg.Results.GetMany(ctx, ids...)
	if err == nil && len(cur) != len(ids) {
		err = fmt.Errorf("%d results for %d ids", len(cur), len(ids))
	}
	if err != nil {
		res.MarkErr = fmt.Errorf("stem: revoke: look up %d task(s) in the result backend: %w", len(ids), err)
		return
	}
	res.Checked, res.Unknown = true, []string{}
	seen := make(map[string]bool, len(ids))
	for i, r := range cur {
		if r == nil && !seen[ids[i]] {
			res.Unknown = append(res.Unknown, ids[i])
		}
		seen[ids[i]] = true
	}
	res.MarkErr = c.markCancelled(ctx, recs, cur, now, mark)
}

// markMargin is how long a revoke must outlive a queued task's due time for
// Revoke to mark the task cancelled before any worker met it.
const markMargin = time.Minute

// markCancelled records tasks that have not started as cancelled, so their
// status shows the revoke before any worker meets them; results holds each
// record's stored result (nil when none). Tasks already running or
// finished keep their state: the worker records their outcome; so do the
// tasks mark refuses (a worker may hold them, see markable). Since
// cancelled is final, a task is only marked when the revoke outlives its
// due time (countdown, ETA or retry backoff) by markMargin; otherwise the
// revoke may expire before a worker meets the task, which then runs, and
// its status says so when it starts.
//
// A failed write stops the marking (a backend that fails one write likely
// fails the next thousand) and is returned: workers still record the tasks
// left unmarked as cancelled when they meet them.
func (c *Controller) markCancelled(ctx context.Context, recs []stemtype.RevokeRecord, results []*stemtype.TaskResult, now time.Time, mark func(id string) bool) error {
	var out []*stemtype.TaskResult
	for i, r := range recs {
		cur := results[i]
		if cur == nil || (cur.State != stemtype.StatePending && cur.State != stemtype.StateRetry) || !mark(r.TaskID) {
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
		cur.Meta = revokedMeta(r.Reason, r.RequestedBy, r.IssuedAt)
		cur.UpdatedAt, cur.FinishedAt = now, now
		if cp, ok := c.cfg.Results.(stemdriver.ConditionalPutter); ok {
			// Atomic: a state a worker recorded since the read wins.
			if _, err := cp.PutIfState(ctx, cur, stemtype.StatePending, stemtype.StateRetry); err != nil {
				return fmt.Errorf("stem: revoke: mark task %s cancelled in the result backend (the %d task(s) after it were not tried): %w",
					r.TaskID, len(recs)-i-1, err)
			}
			continue
		}
		out = append(out, cur)
	}
	if len(out) > 0 {
		if err := c.cfg.Results.Put(ctx, out...); err != nil {
			return fmt.Errorf("stem: revoke: mark %d task(s) cancelled in the result backend: %w", len(out), err)
		}
	}
	return nil
}

// send publishes a command of type typ with payload to the target and
// collects replies until every live targeted worker answered (for a
// broadcast: every live worker of the namespace) or the timeout passed.
// Live workers are those whose presence the control transport lists.
//
// It fails fast rather than wait for a worker that cannot answer: targeted
// workers that are not live are reported in Missing and NotLive at once and
// not waited for, and when no worker is left to wait for (a broadcast with
// no live worker, or only targets that are not live) send returns as soon
// as the command is published. The command is published to every target
// all the same, so a worker that is starting and has not announced itself
// yet still receives it. When the live workers cannot be listed, send logs
// why and waits for every targeted worker, and for a broadcast out the
// whole timeout, reporting only targeted workers as missing.
//
// A publish failure matches ErrBrokerUnavailable.
func (c *Controller) send(ctx context.Context, t Target, typ string, payload any) (*Replies, error) {
	o, err := c.prepare(t, typ, payload)
	if err != nil {
		return nil, err
	}
	return c.deliver(ctx, o, func(ctx context.Context) error { return c.publish(ctx, o) })
}

// publish publishes o with the control transport; a failure matches
// ErrBrokerUnavailable.
func (c *Controller) publish(ctx context.Context, o *outgoing) error {
	if err := c.cfg.Control.Publish(ctx, o.cmd.Targets, o.msg); err != nil {
		return fmt.Errorf("%w: publish %s: %w", ErrBrokerUnavailable, o.cmd.Type, err)
	}
	return nil
}

// outgoing is a command ready to publish.
type outgoing struct {
	cmd       stemtype.ControlCommand
	msg       []byte   // cmd encoded
	targets   []string // the targeted workers, sorted; nil for a broadcast
	broadcast bool
	timeout   time.Duration
	// keys sign the command for namespace, when set.
	keys      *SigningKeys
	namespace string
}

// prepare builds the command of send.
func (c *Controller) prepare(t Target, typ string, payload any) (*outgoing, error) {
	timeout := t.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	targets := slices.Clone(t.Workers)
	slices.Sort(targets)
	targets = slices.Compact(targets)
	broadcast := len(targets) == 0 || slices.Contains(targets, stemtype.BroadcastTarget)
	cmd := stemtype.ControlCommand{RequestID: NewTaskID(), Type: typ, Targets: t.Workers,
		TimeoutMs: timeout.Milliseconds(), Version: stemtype.ControlVersion}
	if c.cfg.SigningKeys != nil {
		cmd.IssuedAt = time.Now().UTC()
	}
	if broadcast {
		cmd.Targets, targets = []string{stemtype.BroadcastTarget}, nil
	}
	o := &outgoing{cmd: cmd, targets: targets, broadcast: broadcast, timeout: timeout,
		keys: c.cfg.SigningKeys, namespace: c.cfg.Namespace}
	if err := o.setPayload(payload); err != nil {
		return nil, err
	}
	return o, nil
}

// setPayload encodes payload into the command and the command into msg.
func (o *outgoing) setPayload(payload any) error {
	o.cmd.Payload = nil
	if payload != nil {
		b, err := json.Marshal(payload)
		if err != nil {
			return fmt.Errorf("stem: encode %s payload: %w", o.cmd.Type, err)
		}
		o.cmd.Payload = b
	}
	if o.keys != nil {
		o.keys.SignCommand(&o.cmd, o.namespace)
	}
	o.msg, _ = json.Marshal(o.cmd)
	return nil
}

// deliver publishes o with publish and collects the replies as send says.
// The live workers are listed once the command is out, not before: the
// command reaches the workers a round trip sooner, and the listing runs
// while they act on it. (A worker that starts during the call may be
// listed without having received the command: it is waited for until the
// timeout and reported missing, as one that died would be.)
func (c *Controller) deliver(ctx context.Context, o *outgoing, publish func(context.Context) error) (*Replies, error) {
	cmd, targets, broadcast, timeout := o.cmd, o.targets, o.broadcast, o.timeout
	if err := publish(ctx); err != nil {
		return nil, err
	}
	live, presenceErr := c.cfg.Control.Workers(ctx)
	out := &Replies{RequestID: cmd.RequestID}
	// expect are the workers waited for; nil with an unknown live set
	// means a broadcast waits out the timeout.
	var expect []string
	if err := presenceErr; err != nil {
		out.PresenceErr = err
		expect = targets
	} else {
		out.Live = make([]string, 0, len(live))
		for _, w := range live {
			out.Live = append(out.Live, w.ID)
		}
		slices.Sort(out.Live)
		out.Live = slices.Compact(out.Live)
		if broadcast {
			expect = slices.Clone(out.Live)
		} else {
			expect = []string{}
			for _, id := range targets {
				if _, ok := slices.BinarySearch(out.Live, id); ok {
					expect = append(expect, id)
				} else {
					out.NotLive = append(out.NotLive, id)
				}
			}
		}
	}
	if out.PresenceErr != nil {
		c.cfg.Logger.WarnContext(ctx, "cannot list live workers: waiting for replies without knowing who is live",
			"namespace", c.cfg.Namespace, "type", cmd.Type, "timeout", timeout, "err", out.PresenceErr)
	}
	seen := map[string]bool{}
	if expect == nil || len(expect) > 0 {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		err := c.cfg.Control.Replies(cctx, cmd.RequestID, func(b []byte) bool {
			var r stemtype.ControlReply
			if json.Unmarshal(b, &r) != nil || r.WorkerID == "" || seen[r.WorkerID] {
				return true
			}
			seen[r.WorkerID] = true
			out.Replies = append(out.Replies, r)
			if expect == nil {
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
	}
	for _, id := range append(slices.Clone(targets), expect...) {
		if !seen[id] {
			out.Missing = append(out.Missing, id)
		}
	}
	slices.Sort(out.Missing)
	out.Missing = slices.Compact(out.Missing)
	return out, nil
}

// signRecord signs r with the controller's signing keys, if any.
func (c *Controller) signRecord(r *stemtype.RevokeRecord) {
	if c.cfg.SigningKeys != nil {
		c.cfg.SigningKeys.SignRevoke(r)
	}
}
