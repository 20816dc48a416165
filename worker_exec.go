package stem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime/debug"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/stem-go/stem/internal/jobs"
	"github.com/stem-go/stem/internal/jsonvalue"
	"github.com/stem-go/stem/internal/settle"
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

// signals implements TaskSignals for an inline task.
type signals struct {
	w   *Worker
	j   *jobs.Job
	ctx context.Context // the task's: bounds what a checkpoint waits for
}

func (s signals) Heartbeat() error {
	s.j.Heartbeat(time.Now())
	return nil
}

func (s signals) ExtendLease(d time.Duration) error {
	s.j.Heartbeat(time.Now())
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	if err := s.w.extend(ctx, s.j, d); err != nil {
		return fmt.Errorf("stem: extend lease of task %s: %w", s.j.TaskID(), err)
	}
	return nil
}

func (s signals) Progress(pct float64, data json.RawMessage) error {
	now := time.Now().UTC()
	s.j.Heartbeat(now)
	p := &stemtype.Progress{Percent: pct, Data: data, At: now}
	s.j.SetProgress(p)
	if s.j.Base != nil && !s.j.Settled() { // a late call must not follow the final state
		if h := s.w.hooks.progressChecked; h != nil {
			h(s.j.TaskID())
		}
		r := *s.j.Base
		r.Progress = p
		r.UpdatedAt = now
		// The check above is only a shortcut: the task may settle before
		// this write is queued, so the writer drops it then (Superseded).
		// Offered, not queued: a report never waits for a slow or stalled
		// result backend (the outcome carries the last one).
		s.w.writer.Offer(settle.Settlement{Result: &r, Superseded: s.j.SettledFlag()})
	}
	return nil
}

// startedDefer is how long a task's started record is held back before it
// is written; the outcome of a task that ends sooner replaces it, so that
// short tasks cost one result write (settle.Settlement.Defer). A person or
// a script polling the state sees started this much later, which none can
// tell from the time the write takes.
const startedDefer = 20 * time.Millisecond

// process runs one claimed delivery to its outcome, in a span of its own
// when the worker traces (WorkerConfig.TracerProvider), reporting its
// start and end to the Observer when there is one.
func (w *Worker) process(parent context.Context, j *jobs.Job) {
	env := j.Env()
	if env == nil {
		w.deadLetter(j)
		return
	}
	if err := w.checkEnvelope(env); err != nil {
		w.deadLetterForged(j, err)
		return
	}
	now := time.Now().UTC()
	task, known := w.cfg.Registry.Lookup(env.Task)

	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	kill := w.jobs.Start(j, now, cancel, known && task.IsIsolated())
	if j.Lost() {
		// The lease lapsed while the task waited in prefetch and another
		// worker owns it now: running it would race that worker's outcome.
		w.log.Warn("lease lost before the task started: skipped", "task_id", env.ID)
		w.settle(j, nil, settle.None, nil, "")
		return
	}
	log := w.log
	var span trace.Span
	if w.tracer != nil {
		ctx, span = w.startRunSpan(ctx, env)
		if sc := span.SpanContext(); sc.IsValid() {
			log = log.With("trace_id", sc.TraceID().String())
		}
	}
	obs := w.cfg.Observer
	if obs != nil {
		obs.TaskStarted(env.Task, env.Queue, now.Sub(dueAt(env)))
	}
	state, terr := w.run(ctx, j, env, now, task, known, kill, log)
	if obs != nil && state != "" {
		obs.TaskEnded(env.Task, env.Queue, state, time.Since(now))
	}
	if span != nil {
		endRunSpan(span, state, terr)
	}
}

// dueAt is when env became due: its NotBefore, else when it was created.
func dueAt(env *stemtype.Envelope) time.Time {
	if env.NotBefore.After(env.CreatedAt) {
		return env.NotBefore
	}
	return env.CreatedAt
}

// run runs a started job to its outcome and returns the state it ended in
// ("" when it was released or another worker owns it now) and its error.
// log is the worker's, with the run's trace id when it is traced.
func (w *Worker) run(ctx context.Context, j *jobs.Job, env *stemtype.Envelope, now time.Time, task *Task, known bool,
	kill <-chan time.Duration, log *slog.Logger) (stemtype.State, *stemtype.TaskError) {
	// Checked after marking the job running: a revoke applied from now on
	// finds the job running and signals it; one applied before is seen here.
	if rec, ok := w.revokeFor(env, now); ok {
		return w.finishRevoked(j, revokedError(rec), log)
	}
	if lim := w.cfg.MaxPayload; lim > 0 && len(env.Args) > lim {
		return w.refuseOversized(j, env, lim, log)
	}
	if !known {
		return w.unknownTask(j, env, log)
	}
	if task.Options.TimeLimit > 0 {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeoutCause(ctx, task.Options.TimeLimit, ErrTimeLimit)
		defer stop()
	}
	j.Base = &stemtype.TaskResult{
		ID: env.ID, Task: env.Task, Queue: env.Queue, State: stemtype.StateStarted,
		Attempt: env.Attempt, WorkerID: w.cfg.ID, StartedAt: now, UpdatedAt: now,
	}
	// Deferred: a task that ends sooner records its outcome alone (which
	// carries StartedAt), in one result write instead of two.
	// Dropped once the task settles, as a progress report is: a task
	// released at shutdown or whose lease was lost stays as it was.
	w.writer.Queue(settle.Settlement{Result: j.Base, Defer: startedDefer, Superseded: j.SettledFlag()})
	if task.Options.Lease > 0 && task.Options.Lease != w.cfg.Lease {
		w.jobs.SetMinLease(j, task.Options.Lease)
		_ = w.extend(ctx, j, task.Options.Lease)
	}

	tc := NewTaskContext(ctx, TaskInfo{ID: env.ID, Task: env.Task, Queue: env.Queue, Attempt: env.Attempt},
		signals{w: w, j: j, ctx: ctx}, log)
	result, err := w.invoke(tc, task, env, KillSignal(kill))
	cause := context.Cause(ctx)

	var rev *RevokedError
	switch {
	case j.Lost():
		// Another worker holds the task now; it records the outcome.
		w.settle(j, nil, settle.None, nil, "")
		return "", nil
	case errors.As(cause, &rev):
		// A later revoke of the same task (adding --kill-after, say) may
		// carry a newer reason; the result records the latest.
		if rec, ok := w.revokeFor(env, time.Now()); ok {
			rev = revokedError(rec)
		}
		return w.finishRevoked(j, rev, log)
	case err != nil && errors.Is(cause, ErrWorkerShutdown):
		log.Info("task interrupted by shutdown: released", "task_id", env.ID)
		w.settle(j, nil, settle.Release, nil, "")
		return "", nil
	default:
		raw, terr, retryable, delay := judge(tc, task, result, err, cause)
		return w.finish(j, raw, terr, retryable, delay, log), terr
	}
}

// judge makes a task's outcome of what its handler returned: the result
// encoded as JSON, or the error as a TaskError with whether a retry is
// allowed and its delay. This calls user code (the result's MarshalJSON,
// the error's Error, Unwrap, Is and As methods: a handler returning a nil
// *MyError as its error hands over an error whose Error may panic), so a
// panic here is recovered like the handler's own: the task fails with
// kind "panic", without retry (it would panic again), and the worker
// lives on. Otherwise the task's redelivery would crash every worker of
// the fleet in turn.
func judge(tc *TaskContext, task *Task, result any, err, cause error) (raw json.RawMessage,
	terr *stemtype.TaskError, retryable bool, delay time.Duration) {
	stage := "encode task result"
	if err != nil {
		stage = "read task error"
	}
	defer func() {
		if v := recover(); v != nil {
			tc.Logger().Error(stage+": panicked", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			raw, retryable, delay = nil, false, 0
			terr = &stemtype.TaskError{Kind: "panic", Message: fmt.Sprintf("stem: %s: panic: %v", stage, v)}
		}
	}()
	if err == nil {
		raw, encErr := jsonvalue.Encode[Args](result)
		if encErr != nil {
			return nil, &stemtype.TaskError{Kind: "handler", Message: "stem: encode task result: " + encErr.Error()}, false, 0
		}
		return raw, nil, false, 0
	}
	kind := "handler"
	var pe *PanicError
	switch {
	case errors.As(err, &pe):
		kind = "panic"
	case errors.Is(cause, ErrTimeLimit) || errors.Is(err, ErrTimeLimit):
		kind = "time_limit"
		err = fmt.Errorf("%w (%s)", ErrTimeLimit, task.Options.TimeLimit)
	}
	delay, _ = RetryDelay(err)
	return nil, &stemtype.TaskError{Kind: kind, Message: err.Error()}, !IsNoRetry(err), delay
}

// nextRetry returns policy's delay before attempt. A policy is user code:
// when it panics, the default policy's delay is used, and the panic logged.
func (w *Worker) nextRetry(policy RetryPolicy, env *stemtype.Envelope, attempt int) (d time.Duration) {
	defer func() {
		if v := recover(); v != nil {
			w.log.Error("retry policy panicked: using the default policy", "task_id", env.ID, "task", env.Task,
				"panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			d = DefaultRetryPolicy().NextRetry(attempt)
		}
	}()
	return policy.NextRetry(attempt)
}

// invoke runs the handler, turning a panic into an error. kill is the
// isolated task's kill-after channel (jobs.Table.Start).
func (w *Worker) invoke(tc *TaskContext, task *Task, env *stemtype.Envelope, kill KillSignal) (result any, err error) {
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
		raw, err := w.cfg.Executor.Execute(tc, task, env, kill)
		if err != nil {
			return nil, err
		}
		return raw, nil
	}
	return task.Run(tc, Args(env.Args))
}

// finish records a handler's outcome: success, a retry, or a final
// failure, and returns its state.
func (w *Worker) finish(j *jobs.Job, result json.RawMessage, terr *stemtype.TaskError, retryable bool, delay time.Duration,
	log *slog.Logger) stemtype.State {
	env := j.Env()
	now := time.Now().UTC()
	res := w.resultFor(j, now)
	if terr == nil {
		res.State, res.Result = stemtype.StateSucceeded, result
		w.succeeded.Add(1)
		w.processed.Add(1)
		w.settle(j, res, settle.Ack, nil, "")
		return res.State
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
			delay = w.nextRetry(policy, env, env.Attempt+1)
		}
		next := *env
		next.Attempt++
		next.NotBefore = now.Add(delay)
		w.signRetry(&next)
		res.State = stemtype.StateRetry
		res.FinishedAt, res.NotBefore = time.Time{}, next.NotBefore
		w.retried.Add(1)
		log.Info("task failed: retrying", "task_id", env.ID, "task", env.Task, "attempt", env.Attempt,
			"retry_in", delay, "err", terr.Message)
		w.settle(j, res, settle.Retry, &next, "")
		return res.State
	}
	res.State = stemtype.StateFailed
	w.failed.Add(1)
	w.processed.Add(1)
	log.Warn("task failed", "task_id", env.ID, "task", env.Task, "attempt", env.Attempt, "kind", terr.Kind, "err", terr.Message)
	w.settle(j, res, settle.Ack, nil, "")
	return res.State
}

// finishRevoked records a revoked task as cancelled, with the revoke's
// reason, requester and time in its metadata, and acknowledges it.
func (w *Worker) finishRevoked(j *jobs.Job, rev *RevokedError, log *slog.Logger) (stemtype.State, *stemtype.TaskError) {
	res := w.resultFor(j, time.Now().UTC())
	res.State = stemtype.StateCancelled
	res.Error = &stemtype.TaskError{Kind: "revoked", Message: rev.Error()}
	res.Meta = revokedMeta(rev.Reason, rev.RequestedBy, rev.IssuedAt)
	w.cancelled.Add(1)
	w.processed.Add(1)
	log.Info("task cancelled by revoke", "task_id", j.Env().ID, "task", j.Env().Task, "requested_by", rev.RequestedBy)
	w.settle(j, res, settle.Ack, nil, "")
	return res.State, res.Error
}

func (w *Worker) resultFor(j *jobs.Job, now time.Time) *stemtype.TaskResult {
	env := j.Env()
	r := &stemtype.TaskResult{ID: env.ID, Task: env.Task, Queue: env.Queue, Attempt: env.Attempt,
		WorkerID: w.cfg.ID, StartedAt: now, FinishedAt: now, UpdatedAt: now}
	if j.Base != nil {
		r.StartedAt = j.Base.StartedAt
	}
	r.Progress = j.Progress()
	return r
}

// deadLetter handles a delivery whose message could not be decoded: it is
// moved to the dead letters with the reason, and a failure is recorded when
// the message still names its id.
func (w *Worker) deadLetter(j *jobs.Job) {
	reason := fmt.Sprintf("undecodable message on queue %s: %v", j.D.Queue, j.D.DecodeErr)
	w.log.Error("dead-lettering undecodable message", "queue", j.D.Queue, "receipt", j.D.Receipt, "err", j.D.DecodeErr)
	var partial struct {
		ID   string `json:"id"`
		Task string `json:"task"`
	}
	var res *stemtype.TaskResult
	if json.Unmarshal(j.D.Raw, &partial) == nil && partial.ID != "" {
		now := time.Now().UTC()
		res = &stemtype.TaskResult{ID: partial.ID, Task: partial.Task, Queue: j.D.Queue, State: stemtype.StateFailed,
			Error: &stemtype.TaskError{Kind: "decode", Message: reason}, WorkerID: w.cfg.ID, FinishedAt: now, UpdatedAt: now}
	}
	w.failed.Add(1)
	w.processed.Add(1)
	w.settle(j, res, settle.DeadLetter, nil, reason)
}

// UnknownTaskRetriesHeader is the envelope header in which a worker counts
// the retries of a task whose name no handler was registered for
// (WorkerConfig.UnknownTaskRetries). It is apart from the task's Attempt,
// so that a worker that knows the task still gives it all its own retries.
const UnknownTaskRetriesHeader = "stem-unknown-task-retries"

// unknownTask handles a task whose name no handler is registered for: it
// is retried, after WorkerConfig.UnknownTaskBackoff, while fewer than
// UnknownTaskRetries retries were made for that reason (during a rolling
// deploy, a worker that knows it may take it meanwhile), then fails with
// ErrUnknownTask naming the task. Its arguments are never decoded.
func (w *Worker) unknownTask(j *jobs.Job, env *stemtype.Envelope, log *slog.Logger) (stemtype.State, *stemtype.TaskError) {
	done, _ := strconv.Atoi(env.Headers[UnknownTaskRetriesHeader]) // absent or garbled: none yet
	done = max(done, 0)
	limit := max(w.cfg.UnknownTaskRetries, 0)
	if done >= limit {
		msg := fmt.Sprintf("%v: no handler registered for %q on worker %s", ErrUnknownTask, env.Task, w.cfg.ID)
		if done > 0 {
			msg += fmt.Sprintf(" (after %d retries for that reason)", done)
		}
		terr := &stemtype.TaskError{Kind: "unknown_task", Message: msg}
		return w.finish(j, nil, terr, false, 0, log), terr
	}
	now := time.Now().UTC()
	delay := w.nextRetry(w.cfg.UnknownTaskBackoff, env, done+1)
	terr := &stemtype.TaskError{Kind: "unknown_task", Message: fmt.Sprintf(
		"%v: no handler registered for %q on worker %s: retry %d of %d in %s, for a worker that knows it",
		ErrUnknownTask, env.Task, w.cfg.ID, done+1, limit, delay.Round(time.Millisecond))}
	next := *env
	next.Headers = maps.Clone(env.Headers)
	if next.Headers == nil {
		next.Headers = map[string]string{}
	}
	next.Headers[UnknownTaskRetriesHeader] = strconv.Itoa(done + 1)
	next.NotBefore = now.Add(delay)
	w.signRetry(&next) // the header changed: the signature of the delivery no longer matches
	res := w.resultFor(j, now)
	res.State, res.Error = stemtype.StateRetry, terr
	res.FinishedAt, res.NotBefore = time.Time{}, next.NotBefore
	w.retried.Add(1)
	log.Warn("no handler registered for the task: retrying, a worker that knows it may take it", "task_id", env.ID,
		"task", env.Task, "retry", done+1, "of", limit, "retry_in", delay)
	w.settle(j, res, settle.Retry, &next, "")
	return res.State, terr
}

// refuseOversized fails a task whose arguments are over the worker's
// MaxPayload, without decoding them or calling its handler (the size is
// that of the raw JSON the broker returned), and moves it to the dead
// letters with the reason, so that it can be read or replayed with a
// higher limit.
func (w *Worker) refuseOversized(j *jobs.Job, env *stemtype.Envelope, limit int, log *slog.Logger) (stemtype.State, *stemtype.TaskError) {
	reason := fmt.Sprintf("%v: task %q has arguments of %d bytes, over worker %s's limit of %d bytes (WorkerConfig.MaxPayload): not run, not decoded",
		ErrPayloadTooLarge, env.Task, len(env.Args), w.cfg.ID, limit)
	res := w.resultFor(j, time.Now().UTC())
	res.State = stemtype.StateFailed
	res.Error = &stemtype.TaskError{Kind: "payload_too_large", Message: reason}
	w.failed.Add(1)
	w.processed.Add(1)
	log.Error("task arguments over the limit: dead-lettered without running", "task_id", env.ID, "task", env.Task,
		"queue", j.D.Queue, "size", len(env.Args), "limit", limit)
	w.settle(j, res, settle.DeadLetter, nil, reason)
	return res.State, res.Error
}
