package stem

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// every calls fn every d until ctx ends.
func every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// enforceTerminates cancels every running task whose cached revoke asks to
// terminate it, with the revoke as a *RevokedError cause, and relays
// kill-after grace periods to isolated ones (jobs.Table.EnforceTerminates).
// It returns the ids of the running tasks under a terminate revoke.
func (w *Worker) enforceTerminates(now time.Time) []string {
	return w.jobs.EnforceTerminates(
		func(env *stemtype.Envelope) (stemtype.RevokeRecord, bool) { return w.revokeFor(env, now) },
		func(rec stemtype.RevokeRecord) error {
			w.log.Info("terminating task on revoke", "task_id", rec.TaskID, "by_name", rec.Name, "requested_by", rec.RequestedBy)
			return revokedError(rec)
		})
}

// revokeFor returns the revoke that applies to the task of env at now: the
// revoke of its id, else the revoke of its task name, as a copy whose
// TaskID is the task's id (Kind and Name still say it was a revoke by
// name). The id lookup costs what it always did; the name lookup is one
// map lookup, skipped while no name is revoked.
func (w *Worker) revokeFor(env *stemtype.Envelope, now time.Time) (stemtype.RevokeRecord, bool) {
	if rec, ok := w.revokes.Lookup(env.ID, now); ok {
		return rec, true
	}
	rec, ok := w.revokes.LookupName(env.Task, now)
	if ok {
		rec.TaskID = env.ID
	}
	return rec, ok
}

// revokeCommand applies the records of a revoke command and reports what
// became of each. A record whose version the cache already holds is the same
// record arriving twice (from the store and from the command): it counts as
// applied.
func (w *Worker) revokeCommand(recs []stemtype.RevokeRecord, now time.Time) stemtype.RevokeReply {
	var ours []stemtype.RevokeRecord
	for _, r := range recs {
		if r.Namespace == w.cfg.Namespace {
			ours = append(ours, r)
		}
	}
	applied, ignored, expired := w.revokes.Apply(now, ours...)
	if obs := w.cfg.Observer; obs != nil && len(applied) > 0 {
		obs.RevokesApplied(len(applied))
	}
	reply := stemtype.RevokeReply{Tasks: []string{}, Inflight: []string{}, Ignored: []string{}, Expired: []string{}}
	// A revoke by name applied is listed in Names; ignored or expired, as
	// "name NAME" (RevokeRecord.Target).
	appliedRec := func(r stemtype.RevokeRecord) {
		if r.Kind == stemtype.RevokeKindName {
			reply.Names = append(reply.Names, r.Name)
		} else {
			reply.Tasks = append(reply.Tasks, r.TaskID)
		}
	}
	for _, r := range applied {
		appliedRec(r)
	}
	for _, r := range expired {
		reply.Expired = append(reply.Expired, r.Target())
	}
	for _, r := range ignored {
		var cur stemtype.RevokeRecord
		var ok bool
		if r.Kind == stemtype.RevokeKindName {
			cur, ok = w.revokes.LookupName(r.Name, now)
		} else {
			cur, ok = w.revokes.Lookup(r.TaskID, now)
		}
		if ok && cur.Version == r.Version {
			appliedRec(r)
		} else {
			reply.Ignored = append(reply.Ignored, r.Target())
		}
	}
	named := make(map[string]bool, len(ours))
	names := map[string]bool{}
	for _, r := range ours {
		if r.Kind == stemtype.RevokeKindName {
			names[r.Name] = true
		} else {
			named[r.TaskID] = true
		}
	}
	if len(names) > 0 {
		// A revoke by name counts the running tasks of its names as
		// named ones: the reply lists those it signalled and held.
		for _, a := range w.jobs.Inflight(now) {
			if names[a.Task] {
				named[a.ID] = true
			}
		}
	}
	for _, id := range w.enforceTerminates(now) {
		if named[id] {
			reply.Inflight = append(reply.Inflight, id)
		}
	}
	// Looked up after the revoke was applied: a task that starts from now
	// on (claimed later, or waiting in prefetch) meets it before it starts,
	// and the worker records it cancelled, so only tasks already running
	// or settling count as held. process marks a job running before it
	// looks the revoke up, so none slips between the two.
	reply.Held = w.jobs.Held(named)
	return reply
}

// serveControl answers control commands until ctx ends. A malformed command
// is logged and, when it names a request id, answered with an error.
func (w *Worker) serveControl(ctx context.Context, sub stemdriver.ControlSubscription) {
	for {
		select {
		case <-ctx.Done():
			return
		case msg, ok := <-sub.C():
			if !ok {
				return
			}
			w.handleControl(ctx, msg)
		}
	}
}

func (w *Worker) handleControl(ctx context.Context, msg []byte) {
	var cmd stemtype.ControlCommand
	if err := json.Unmarshal(msg, &cmd); err != nil {
		head := malformedHead(msg)
		w.log.Warn("malformed control message", "err", err, "request_id", head.RequestID, "bytes", len(msg))
		if head.RequestID != "" && (head.Broadcast() || slices.Contains(head.Targets, w.cfg.ID)) {
			w.reply(ctx, head.RequestID, nil, fmt.Errorf("malformed control message: %v", err))
		}
		return
	}
	if cmd.RequestID == "" {
		w.log.Warn("control message without requestId ignored", "type", cmd.Type)
		return
	}
	if !cmd.Broadcast() && !slices.Contains(cmd.Targets, w.cfg.ID) {
		return
	}
	if err := w.checkCommand(&cmd, time.Now()); err != nil {
		if w.refuseCommand(&cmd, err) {
			w.reply(ctx, cmd.RequestID, nil, err)
		}
		if obs := w.cfg.Observer; obs != nil {
			obs.ControlServed(cmd.Type, false)
		}
		return
	}
	// A timeout too long for a Duration (it would overflow to a past
	// deadline, and the reply would never go out) is no timeout.
	if cmd.TimeoutMs > 0 && cmd.TimeoutMs <= int64(math.MaxInt64/time.Millisecond) {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(cmd.TimeoutMs)*time.Millisecond)
		defer cancel()
	}
	payload, err := w.command(ctx, &cmd)
	if err != nil {
		w.log.Warn("control command failed", "type", cmd.Type, "request_id", cmd.RequestID, "err", err)
	}
	w.reply(ctx, cmd.RequestID, payload, err)
	if obs := w.cfg.Observer; obs != nil {
		obs.ControlServed(cmd.Type, err == nil)
	}
	if rep, ok := payload.(stemtype.ShutdownReply); ok && err == nil {
		// Replied first: the controller hears before the worker stops.
		w.shutdown(rep.Mode)
	}
}

// malformedHead reads the requestId and targets of a control message that
// does not decode, up to where it breaks: a command whose payload is cut
// short or is not JSON still names them first (the Controller writes them
// first), so its sender gets an error reply rather than a timeout, from the
// workers it addressed only. A field of the wrong type is left empty.
func malformedHead(msg []byte) stemtype.ControlCommand {
	var head stemtype.ControlCommand
	dec := json.NewDecoder(bytes.NewReader(msg))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return head
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			break
		}
		var dst any = new(json.RawMessage)
		switch key {
		case "requestId":
			dst = &head.RequestID
		case "targets":
			dst = &head.Targets
		}
		if err := dec.Decode(dst); err != nil {
			var typeErr *json.UnmarshalTypeError
			if !errors.As(err, &typeErr) {
				break
			}
		}
	}
	return head
}

// shutdown stops the worker in mode (a stemtype.Shutdown* constant), as
// a shutdown command asks: Run's context ends with ErrShutdownRequested.
// The first request's mode holds, except that a harder mode wins.
func (w *Worker) shutdown(mode string) {
	level := map[string]int32{stemtype.ShutdownWarm: 1, stemtype.ShutdownSoft: 2, stemtype.ShutdownHard: 3}[mode]
	for {
		cur := w.shutdownMode.Load()
		if cur >= level || w.shutdownMode.CompareAndSwap(cur, level) {
			break
		}
	}
	w.log.Info("shutdown requested", "mode", mode)
	w.stopRun(ErrShutdownRequested)
}

func (w *Worker) command(ctx context.Context, cmd *stemtype.ControlCommand) (any, error) {
	now := time.Now().UTC()
	switch cmd.Type {
	case stemtype.CommandPing:
		return stemtype.PingReply{Timestamp: now}, nil
	case stemtype.CommandInspect:
		// No payload asks for the in-flight tasks alone: the revoke set
		// may hold a million records.
		var req stemtype.InspectRequest
		if len(cmd.Payload) > 0 && string(cmd.Payload) != "null" {
			if err := json.Unmarshal(cmd.Payload, &req); err != nil {
				return nil, fmt.Errorf("bad inspect payload: %v", err)
			}
		}
		if req.Limit < 0 {
			return nil, fmt.Errorf("bad inspect payload: negative limit %d", req.Limit)
		}
		if req.ScheduledLimit < 0 {
			return nil, fmt.Errorf("bad inspect payload: negative scheduledLimit %d", req.ScheduledLimit)
		}
		r := w.inspect(now, req)
		if req.IncludeScheduled {
			var err error
			if r.Scheduled, r.ScheduledTotal, err = w.scheduled(ctx, req.ScheduledLimit); err != nil {
				return nil, err
			}
		}
		return r, nil
	case stemtype.CommandStats:
		return w.stats(ctx, now), nil
	case stemtype.CommandRevoke:
		var req stemtype.RevokeRequest
		if err := json.Unmarshal(cmd.Payload, &req); err != nil {
			return nil, fmt.Errorf("bad revoke payload: %v", err)
		}
		for i := range req.Records {
			if err := req.Records[i].Validate(); err != nil {
				return nil, err
			}
		}
		recs, rejected := w.verifiedRecords(req.Records, "revoke command "+cmd.RequestID)
		reply := w.revokeCommand(recs, now)
		reply.Rejected = rejected
		return reply, nil
	case stemtype.CommandShutdown:
		var req stemtype.ShutdownRequest
		if len(cmd.Payload) > 0 && string(cmd.Payload) != "null" {
			if err := json.Unmarshal(cmd.Payload, &req); err != nil {
				return nil, fmt.Errorf("bad shutdown payload: %v", err)
			}
		}
		if req.Mode == "" {
			req.Mode = stemtype.ShutdownWarm
		}
		if !validShutdownMode(req.Mode) {
			return nil, fmt.Errorf("bad shutdown payload: unknown mode %q (want warm, soft or hard)", req.Mode)
		}
		return stemtype.ShutdownReply{Mode: req.Mode, Inflight: w.jobs.Running()}, nil
	case stemtype.CommandPause, stemtype.CommandResume:
		var req stemtype.QueuePauseRequest
		if err := json.Unmarshal(cmd.Payload, &req); err != nil {
			return nil, fmt.Errorf("bad %s payload: %v", cmd.Type, err)
		}
		if err := w.verifyRecord(&req.Record, cmd.Type+" command "+cmd.RequestID); err != nil {
			return nil, fmt.Errorf("%s of %s: record refused: %w", cmd.Type, req.Record.Target(), err)
		}
		return w.pauseCommand(ctx, cmd.Type, req, now)
	case "":
		return nil, fmt.Errorf("control command has no type")
	default:
		return nil, fmt.Errorf("unknown control command type %q", cmd.Type)
	}
}

func (w *Worker) reply(ctx context.Context, requestID string, payload any, cmdErr error) {
	r := stemtype.ControlReply{RequestID: requestID, WorkerID: w.cfg.ID, Status: stemtype.ReplyOK}
	if cmdErr != nil {
		r.Status, r.Error = stemtype.ReplyError, &stemtype.ControlError{Message: cmdErr.Error()}
	} else if payload != nil {
		b, err := json.Marshal(payload)
		if err != nil {
			r.Status, r.Error = stemtype.ReplyError, &stemtype.ControlError{Message: "encode reply: " + err.Error()}
		} else {
			r.Payload = b
		}
	}
	b, _ := json.Marshal(r)
	if err := w.cfg.Control.Reply(ctx, requestID, b); err != nil {
		w.log.Warn("send control reply", "request_id", requestID, "err", err)
	}
}

// inspect returns the worker's in-flight tasks and, when req asks, the
// req.Limit newest records of its revoke set (every record for 0) and the
// tasks waiting for a slot.
func (w *Worker) inspect(now time.Time, req stemtype.InspectRequest) stemtype.InspectReply {
	active := w.jobs.Inflight(now)
	r := stemtype.InspectReply{Inflight: len(active), Active: active, RevokedTotal: w.revokes.Len()}
	if req.IncludeRevoked {
		r.Revoked = w.revokes.Newest(req.Limit)
		r.RevokedTotal = max(r.RevokedTotal, len(r.Revoked)) // a revoke applied in between
	}
	if req.IncludeReserved {
		r.Reserved = w.reserved(now)
	}
	return r
}

// scheduled lists the delayed tasks of the worker's queues, at most limit
// per queue (stemtype.DefaultScheduledLimit for 0), soonest first, and
// how many there are in all. The list is nil when the broker cannot list
// delayed messages (stemdriver.DelayedLister).
func (w *Worker) scheduled(ctx context.Context, limit int) ([]stemtype.ScheduledTask, int64, error) {
	dl, ok := w.cfg.Broker.(stemdriver.DelayedLister)
	if !ok {
		return nil, 0, nil
	}
	if limit == 0 {
		limit = stemtype.DefaultScheduledLimit
	}
	out := []stemtype.ScheduledTask{}
	var total int64
	for _, q := range w.cfg.Queues {
		envs, n, err := dl.Delayed(ctx, q, limit)
		if err != nil {
			return nil, 0, fmt.Errorf("list the delayed tasks of queue %q: %w", q, err)
		}
		total += n
		for _, env := range envs {
			out = append(out, stemtype.ScheduledTask{ID: env.ID, Task: env.Task, Queue: env.Queue,
				Attempt: env.Attempt, NotBefore: env.NotBefore.UTC()})
		}
	}
	slices.SortStableFunc(out, func(a, b stemtype.ScheduledTask) int { return a.NotBefore.Compare(b.NotBefore) })
	return out, total, nil
}

// Stats returns the worker's counters and the depths of its queues, as the
// stats control command reports them.
func (w *Worker) Stats(ctx context.Context) stemtype.StatsReply {
	return w.stats(ctx, time.Now().UTC())
}

func (w *Worker) stats(ctx context.Context, now time.Time) stemtype.StatsReply {
	host, _ := os.Hostname()
	s := stemtype.StatsReply{
		Namespace: w.cfg.Namespace, Host: host, PID: os.Getpid(),
		Concurrency: w.cfg.Concurrency, Prefetch: w.cfg.Prefetch, Inflight: w.jobs.Running(),
		Processed: w.processed.Load(), Succeeded: w.succeeded.Load(), Failed: w.failed.Load(),
		Retried: w.retried.Load(), Cancelled: w.cancelled.Load(), ResultsGivenUp: w.writer.GaveUp(),
		Queues: make(map[string]int64, len(w.cfg.Queues)), UptimeMs: now.Sub(w.started).Milliseconds(), Timestamp: now,
		Paused: w.pausedQueues(now), SignatureRejected: w.sig.rejected.Load(),
	}
	if w.cfg.Stores != nil {
		stores := *w.cfg.Stores
		s.Stores = &stores
	}
	for _, q := range w.cfg.Queues {
		n, err := w.cfg.Broker.Depth(ctx, q)
		if err != nil {
			w.log.Warn("queue depth for stats", "queue", q, "err", err)
			n = -1
		}
		s.Queues[q] = n
	}
	return s
}

// presenceTTL is how long one announcement keeps the worker listed: three
// announcement intervals, so that one late or lost announcement is not
// mistaken for a dead worker.
func (w *Worker) presenceTTL() time.Duration { return 3 * w.cfg.PresenceInterval }

// announce records the worker's presence, with this run's instance token.
// An error matching stemdriver.ErrWorkerIDTaken means another live worker
// holds the id.
func (w *Worker) announce(ctx context.Context) error {
	host, _ := os.Hostname()
	running, waiting := w.jobs.Counts()
	info := stemtype.WorkerInfo{ID: w.cfg.ID, Namespace: w.cfg.Namespace, Host: host, PID: os.Getpid(),
		Queues: w.cfg.Queues, Concurrency: w.cfg.Concurrency, StartedAt: w.started.UTC(), LastSeen: time.Now().UTC(),
		Instance: w.instance, Inflight: running, Prefetched: waiting, Version: Version(),
		IntervalMs: w.cfg.PresenceInterval.Milliseconds(), Paused: w.pausedQueues(time.Now())}
	return w.cfg.Control.Announce(ctx, info, w.presenceTTL())
}

// announceFirst announces the worker before it claims anything, and
// refuses to start, returning an error matching stemdriver.ErrWorkerIDTaken
// that names the live worker's host and pid, while another worker holds
// the id. Other failures are logged and left to the next announcements.
func (w *Worker) announceFirst(ctx context.Context) error {
	err := w.announce(ctx)
	if errors.Is(err, stemdriver.ErrWorkerIDTaken) {
		return fmt.Errorf("%w; if that worker is gone, its id is free %v after it was last seen", err, w.presenceTTL())
	}
	if err != nil && ctx.Err() == nil {
		w.log.Warn("announce presence", "err", err)
	}
	return nil
}

// presence announces the worker every PresenceInterval until ctx ends. An
// announcement refused because another instance holds the id (this
// worker's presence lapsed, as in a long pause or a network partition, and
// another worker took the id) stops the worker with that error as the
// cause (stop is Run's), so that two workers never keep answering to one
// id.
func (w *Worker) presence(ctx context.Context, stop context.CancelCauseFunc) {
	every(ctx, w.cfg.PresenceInterval, func() {
		err := w.announce(ctx)
		switch {
		case err == nil || ctx.Err() != nil:
		case errors.Is(err, stemdriver.ErrWorkerIDTaken):
			w.log.Error("worker id taken by another live worker: shutting down", "err", err)
			stop(err)
		default:
			w.log.Warn("announce presence", "err", err)
		}
	})
}

// reserved lists the tasks the worker claimed that wait for a free slot,
// longest waiting first.
func (w *Worker) reserved(now time.Time) []stemtype.ReservedTask {
	waiting := w.jobs.Waiting()
	out := make([]stemtype.ReservedTask, 0, len(waiting))
	for _, j := range waiting {
		env := j.Env()
		if env == nil {
			continue
		}
		out = append(out, stemtype.ReservedTask{ID: env.ID, Task: env.Task, Queue: env.Queue,
			Attempt: env.Attempt, ClaimedAt: j.ClaimedAt.UTC(), WaitedMs: now.Sub(j.ClaimedAt).Milliseconds()})
	}
	slices.SortFunc(out, func(a, b stemtype.ReservedTask) int {
		return cmp.Or(a.ClaimedAt.Compare(b.ClaimedAt), strings.Compare(a.ID, b.ID))
	})
	return out
}
