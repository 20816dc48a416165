package stem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/stem-go/stem/internal/jsonvalue"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// Executor runs tasks registered with an isolated entrypoint outside the
// worker's process (package isolated provides one over child processes).
//
// Execute runs task's entrypoint for env and returns its JSON result. It
// relays the child's checkpoints to tc (Heartbeat, ExtendLease, Progress),
// relays tc's cancellation to the child, and must return once the task
// ended, whatever the child does. KillAfter tells it when to stop waiting
// for a child that ignores a terminate revoke.
type Executor interface {
	Execute(tc *TaskContext, task *Task, env *stemtype.Envelope, kill KillSignal) (json.RawMessage, error)
}

// KillSignal delivers the grace period after which a terminated isolated
// task's process is killed; a later revoke may shorten it.
type KillSignal <-chan time.Duration

// job is one claimed delivery from claim to settlement.
type job struct {
	d         stemdriver.Delivery
	env       *stemtype.Envelope
	claimedAt time.Time // when fetch claimed it; read-only

	// guarded by Worker.mu
	minLease    time.Duration // the task's lease: no extension goes below it
	leaseDur    time.Duration
	leaseUntil  time.Time
	running     bool
	startedAt   time.Time
	cancel      context.CancelCauseFunc
	isolated    bool
	kill        chan time.Duration
	killAfterMs int64 // the grace period last relayed on kill
	settling    bool  // the outcome went to the result writer

	// settled is set before the outcome goes to the result writer, which
	// drops the job's progress writes it flushes from then on: the outcome
	// carries the last progress, and no write may follow a final state.
	settled atomic.Bool

	lastHeartbeat atomic.Int64 // unix nanos
	progress      atomic.Pointer[stemtype.Progress]
	terminating   atomic.Bool
	lost          atomic.Bool
	base          *stemtype.TaskResult // the started record, read-only once set
}

func (j *job) taskID() string {
	if j.env != nil {
		return j.env.ID
	}
	return ""
}

// workerTestHooks are the worker's seams for tests (see export_test.go).
type workerTestHooks struct {
	progressChecked func(taskID string) // Progress saw the task unsettled, before it queues
	settled         func(taskID string) // the outcome went to the result writer
}

// testHooks holds the installed test seams; nil outside tests.
var testHooks atomic.Pointer[workerTestHooks]

// signals implements TaskSignals for an inline task.
type signals struct {
	w   *Worker
	j   *job
	ctx context.Context // the task's: bounds what a checkpoint waits for
}

func (s signals) Heartbeat() error {
	s.j.lastHeartbeat.Store(time.Now().UnixNano())
	return nil
}

func (s signals) ExtendLease(d time.Duration) error {
	s.j.lastHeartbeat.Store(time.Now().UnixNano())
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	if err := s.w.extend(ctx, s.j, d); err != nil {
		return fmt.Errorf("stem: extend lease of task %s: %w", s.j.taskID(), err)
	}
	return nil
}

func (s signals) Progress(pct float64, data json.RawMessage) error {
	now := time.Now().UTC()
	s.j.lastHeartbeat.Store(now.UnixNano())
	p := &stemtype.Progress{Percent: pct, Data: data, At: now}
	s.j.progress.Store(p)
	s.w.mu.Lock()
	settled := s.j.settling
	s.w.mu.Unlock()
	if s.j.base != nil && !settled { // a late call must not follow the final state
		if h := testHooks.Load(); h != nil && h.progressChecked != nil {
			h.progressChecked(s.j.taskID())
		}
		r := *s.j.base
		r.Progress = p
		r.UpdatedAt = now
		// The check above is only a shortcut: the task may settle before
		// this write is queued, so the writer drops it then (job.settled).
		s.w.writer.progress(s.j, &r)
	}
	return nil
}

type settleOp int

const (
	settleNone settleOp = iota
	settleAck
	settleRetry
	settleRelease
	settleDeadLetter
)

// process runs one claimed delivery to its outcome.
func (w *Worker) process(parent context.Context, j *job) {
	defer w.handlerDone()
	if j.env == nil {
		w.deadLetter(j)
		return
	}
	env := j.env
	now := time.Now().UTC()
	task, known := w.cfg.Registry.Lookup(env.Task)

	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	w.mu.Lock()
	j.running, j.startedAt, j.cancel = true, now, cancel
	j.isolated = known && task.IsIsolated()
	if j.isolated {
		j.kill = make(chan time.Duration, 4)
	}
	w.mu.Unlock()
	if j.lost.Load() {
		// The lease lapsed while the task waited in prefetch and another
		// worker owns it now: running it would race that worker's outcome.
		w.log.Warn("lease lost before the task started: skipped", "task_id", env.ID)
		w.settle(j, nil, settleNone, nil, "")
		return
	}
	// Checked after marking the job running: a revoke applied from now on
	// finds the job running and signals it; one applied before is seen here.
	if rec, ok := w.revokes.Lookup(env.ID, now); ok {
		w.finishRevoked(j, revokedError(rec))
		return
	}
	if !known {
		w.finish(j, nil, &stemtype.TaskError{Kind: "unknown_task",
			Message: fmt.Sprintf("%v: no handler registered for %q on worker %s", ErrUnknownTask, env.Task, w.cfg.ID)}, false, 0)
		return
	}
	if task.Options.TimeLimit > 0 {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeoutCause(ctx, task.Options.TimeLimit, ErrTimeLimit)
		defer stop()
	}
	j.base = &stemtype.TaskResult{
		ID: env.ID, Task: env.Task, Queue: env.Queue, State: stemtype.StateStarted,
		Attempt: env.Attempt, WorkerID: w.cfg.ID, StartedAt: now, UpdatedAt: now,
	}
	w.writer.put(j.base)
	if task.Options.Lease > 0 && task.Options.Lease != w.cfg.Lease {
		w.mu.Lock()
		j.minLease = task.Options.Lease
		w.mu.Unlock()
		_ = w.extend(ctx, j, task.Options.Lease)
	}

	tc := NewTaskContext(ctx, TaskInfo{ID: env.ID, Task: env.Task, Queue: env.Queue, Attempt: env.Attempt},
		signals{w: w, j: j, ctx: ctx}, w.log)
	result, err := w.invoke(tc, task, env, j)
	cause := context.Cause(ctx)

	var rev *RevokedError
	switch {
	case j.lost.Load():
		// Another worker holds the task now; it records the outcome.
		w.settle(j, nil, settleNone, nil, "")
	case errors.As(cause, &rev):
		// A later revoke of the same task (adding --kill-after, say) may
		// carry a newer reason; the result records the latest.
		if rec, ok := w.revokes.Lookup(env.ID, time.Now()); ok {
			rev = revokedError(rec)
		}
		w.finishRevoked(j, rev)
	case err != nil && errors.Is(cause, ErrWorkerShutdown):
		w.log.Info("task interrupted by shutdown: released", "task_id", env.ID)
		w.settle(j, nil, settleRelease, nil, "")
	case err == nil:
		raw, encErr := jsonvalue.Encode[Args](result)
		if encErr != nil {
			w.finish(j, nil, &stemtype.TaskError{Kind: "handler", Message: "stem: encode task result: " + encErr.Error()}, false, 0)
			return
		}
		w.finish(j, raw, nil, false, 0)
	default:
		kind := "handler"
		var pe *PanicError
		switch {
		case errors.As(err, &pe):
			kind = "panic"
		case errors.Is(cause, ErrTimeLimit) || errors.Is(err, ErrTimeLimit):
			kind = "time_limit"
			err = fmt.Errorf("%w (%s)", ErrTimeLimit, task.Options.TimeLimit)
		}
		delay, _ := RetryDelay(err)
		w.finish(j, nil, &stemtype.TaskError{Kind: kind, Message: err.Error()}, !IsNoRetry(err), delay)
	}
}

// invoke runs the handler, turning a panic into an error.
func (w *Worker) invoke(tc *TaskContext, task *Task, env *stemtype.Envelope, j *job) (result any, err error) {
	defer func() {
		if v := recover(); v != nil {
			pe := &PanicError{Value: v, Stack: debug.Stack()}
			tc.Logger().Error("task panicked", "panic", fmt.Sprint(v), "stack", string(pe.Stack))
			result, err = nil, pe
		}
	}()
	if task.IsIsolated() {
		if w.cfg.Executor == nil {
			return nil, NoRetry(fmt.Errorf("stem: task %q is isolated but worker %s has no Executor", task.Name, w.cfg.ID))
		}
		raw, err := w.cfg.Executor.Execute(tc, task, env, j.kill)
		if err != nil {
			return nil, err
		}
		return raw, nil
	}
	return task.Run(tc, Args(env.Args))
}

// finish records a handler's outcome: success, a retry, or a final failure.
func (w *Worker) finish(j *job, result json.RawMessage, terr *stemtype.TaskError, retryable bool, delay time.Duration) {
	env := j.env
	now := time.Now().UTC()
	res := w.resultFor(j, now)
	if terr == nil {
		res.State, res.Result = stemtype.StateSucceeded, result
		w.succeeded.Add(1)
		w.processed.Add(1)
		w.settle(j, res, settleAck, nil, "")
		return
	}
	res.Error = terr
	maxRetries := 0
	if t, ok := w.cfg.Registry.Lookup(env.Task); ok {
		maxRetries = t.Options.MaxRetries
	}
	if env.MaxRetries != nil {
		maxRetries = *env.MaxRetries
	}
	if retryable && env.Attempt < maxRetries {
		if delay <= 0 {
			policy := DefaultRetryPolicy()
			if t, ok := w.cfg.Registry.Lookup(env.Task); ok && t.Options.RetryPolicy != nil {
				policy = t.Options.RetryPolicy
			}
			delay = policy.NextRetry(env.Attempt + 1)
		}
		next := *env
		next.Attempt++
		next.NotBefore = now.Add(delay)
		res.State = stemtype.StateRetry
		res.FinishedAt, res.NotBefore = time.Time{}, next.NotBefore
		w.retried.Add(1)
		w.log.Info("task failed: retrying", "task_id", env.ID, "task", env.Task, "attempt", env.Attempt,
			"retry_in", delay, "err", terr.Message)
		w.settle(j, res, settleRetry, &next, "")
		return
	}
	res.State = stemtype.StateFailed
	w.failed.Add(1)
	w.processed.Add(1)
	w.log.Warn("task failed", "task_id", env.ID, "task", env.Task, "attempt", env.Attempt, "kind", terr.Kind, "err", terr.Message)
	w.settle(j, res, settleAck, nil, "")
}

// finishRevoked records a revoked task as cancelled, with the revoke's
// reason, requester and time in its metadata, and acknowledges it.
func (w *Worker) finishRevoked(j *job, rev *RevokedError) {
	res := w.resultFor(j, time.Now().UTC())
	res.State = stemtype.StateCancelled
	res.Error = &stemtype.TaskError{Kind: "revoked", Message: rev.Error()}
	res.Meta = RevokedMeta(rev.Reason, rev.RequestedBy, rev.IssuedAt)
	w.cancelled.Add(1)
	w.processed.Add(1)
	w.log.Info("task cancelled by revoke", "task_id", j.env.ID, "task", j.env.Task, "requested_by", rev.RequestedBy)
	w.settle(j, res, settleAck, nil, "")
}

// RevokedMeta returns the result metadata recorded for a revoked task.
func RevokedMeta(reason, by string, at time.Time) map[string]string {
	return map[string]string{
		stemtype.MetaRevokedReason: reason,
		stemtype.MetaRevokedBy:     by,
		stemtype.MetaRevokedAt:     at.UTC().Format(time.RFC3339Nano),
	}
}

func revokedError(rec stemtype.RevokeRecord) *RevokedError {
	return &RevokedError{TaskID: rec.TaskID, Reason: rec.Reason, RequestedBy: rec.RequestedBy, IssuedAt: rec.IssuedAt}
}

func (w *Worker) resultFor(j *job, now time.Time) *stemtype.TaskResult {
	env := j.env
	r := &stemtype.TaskResult{ID: env.ID, Task: env.Task, Queue: env.Queue, Attempt: env.Attempt,
		WorkerID: w.cfg.ID, StartedAt: now, FinishedAt: now, UpdatedAt: now}
	if j.base != nil {
		r.StartedAt = j.base.StartedAt
	}
	r.Progress = j.progress.Load()
	return r
}

// deadLetter handles a delivery whose message could not be decoded: it is
// moved to the dead letters with the reason, and a failure is recorded when
// the message still names its id.
func (w *Worker) deadLetter(j *job) {
	reason := fmt.Sprintf("undecodable message on queue %s: %v", j.d.Queue, j.d.DecodeErr)
	w.log.Error("dead-lettering undecodable message", "queue", j.d.Queue, "receipt", j.d.Receipt, "err", j.d.DecodeErr)
	var partial struct {
		ID   string `json:"id"`
		Task string `json:"task"`
	}
	var res *stemtype.TaskResult
	if json.Unmarshal(j.d.Raw, &partial) == nil && partial.ID != "" {
		now := time.Now().UTC()
		res = &stemtype.TaskResult{ID: partial.ID, Task: partial.Task, Queue: j.d.Queue, State: stemtype.StateFailed,
			Error: &stemtype.TaskError{Kind: "decode", Message: reason}, WorkerID: w.cfg.ID, FinishedAt: now, UpdatedAt: now}
	}
	w.failed.Add(1)
	w.processed.Add(1)
	w.settle(j, res, settleDeadLetter, nil, reason)
}

// settle hands the outcome to the result writer, which records the result
// and then acknowledges, retries or dead-letters the delivery. A release
// or a lost lease records no result: it is settled at once, outside the
// writer (settleBare).
func (w *Worker) settle(j *job, res *stemtype.TaskResult, op settleOp, next *stemtype.Envelope, reason string) {
	if res == nil && (op == settleRelease || op == settleNone) {
		w.settleBare(op, j)
		return
	}
	w.markSettled(j)
	w.writer.settle(settlement{job: j, res: res, op: op, next: next, reason: reason})
	w.settledHook(j)
}

// markSettled marks j's outcome decided: the job no longer runs, and its
// progress writes are dropped from now on.
func (w *Worker) markSettled(j *job) {
	w.mu.Lock()
	j.running, j.settling = false, true
	w.mu.Unlock()
	j.settled.Store(true)
}

func (w *Worker) settledHook(j *job) {
	if h := testHooks.Load(); h != nil && h.settled != nil {
		h.settled(j.taskID())
	}
}

// settleBare settles jobs whose outcome records no result: with
// settleRelease they go back to the broker in one Release, with
// settleNone (the lease was lost) there is nothing to do. Either way
// they are forgotten. This never waits for the result writer: a
// shutdown release must not be held up, nor skipped, because a result
// write queued before it (a progress report, another task's outcome)
// stalls or fails; the task would wait out its whole lease. What cannot
// be released within releaseTimeout is left to its lease.
func (w *Worker) settleBare(op settleOp, js ...*job) {
	if len(js) == 0 {
		return
	}
	w.mu.Lock()
	if w.bare++; w.bare == 1 {
		w.bareIdle = make(chan struct{})
	}
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		if w.bare--; w.bare == 0 {
			close(w.bareIdle)
		}
		w.mu.Unlock()
	}()
	for _, j := range js {
		w.markSettled(j)
	}
	if op == settleRelease {
		ds := make([]stemdriver.Delivery, len(js))
		for i, j := range js {
			ds[i] = j.d
		}
		ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
		err := w.cfg.Broker.Release(ctx, ds...)
		for attempt := 2; err != nil && !errors.Is(err, stemdriver.ErrLeaseLost) && attempt <= 3; attempt++ {
			w.log.Warn("release tasks failed: retrying", "tasks", len(ds), "err", err)
			if !sleepCtx(ctx, time.Duration(attempt)*25*time.Millisecond) {
				break
			}
			err = w.cfg.Broker.Release(ctx, ds...)
		}
		cancel()
		switch {
		case errors.Is(err, stemdriver.ErrLeaseLost):
			w.log.Warn("release tasks: lease lost, another worker owns the task now", "tasks", len(ds), "err", err)
		case err != nil:
			w.log.Error("release tasks: giving up, leaving them to lease expiry", "tasks", len(ds), "err", err)
		}
	}
	for _, j := range js {
		w.forget(j)
		w.settledHook(j)
	}
}

// releaseTimeout bounds the release of tasks at shutdown.
const releaseTimeout = 5 * time.Second

// awaitBare waits for the settleBare calls under way, for at most a
// little more than releaseTimeout, which bounds each of them.
func (w *Worker) awaitBare() {
	w.mu.Lock()
	n, idle := w.bare, w.bareIdle
	w.mu.Unlock()
	if n == 0 {
		return
	}
	w.log.Info("waiting for task releases under way", "count", n)
	t := time.NewTimer(releaseTimeout + time.Second)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C:
		w.log.Warn("task releases still under way: leaving them", "count", n)
	}
}

// forget drops a settled job from the held set.
func (w *Worker) forget(j *job) {
	w.mu.Lock()
	if k := heldKey(j.d); w.held[k] == j {
		delete(w.held, k)
	}
	w.mu.Unlock()
}
