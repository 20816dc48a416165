package isolated

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// outcome is how a task run on a child ended: its result or error, and
// whether the child may run another task.
type outcome struct {
	res   json.RawMessage
	err   error
	reuse bool
}

// taskRun is one task driven on one child, from the run frame it sends to
// the outcome. Its loop is the only writer to the child during the run, and
// only about this run. Checkpoints run one at a time, in order, in a
// goroutine of their own, so that a slow one (an ExtendLease waiting for the
// broker, a blocked Progress) delays no kill: ckBusy says one is under way,
// ckQueue holds the next ones. The goroutine delivers its answer on ckDone,
// which has room for it, so it ends even once the run is over.
type taskRun struct {
	p   *Pool
	c   *proc
	tc  *stem.TaskContext
	env *stemtype.Envelope
	n   uint64 // the run's number on c: frames of other runs are stale or malformed

	logger *slog.Logger // built on first use by log

	done   <-chan struct{} // tc.Done(), nil once seen
	exited <-chan struct{} // c.exited, nil once seen
	cause  error           // tc's cancellation cause, once tc is done

	killAt time.Time // when the child is killed; zero while never
	limit  time.Time // tc's deadline, when a kill was armed for it
	killT  *time.Timer
	killC  <-chan time.Time
	drainT *time.Timer
	drainC <-chan time.Time // armed once the child exited

	ckQueue []*message
	ckBusy  bool
	ckType  string // the type of the checkpoint under way
	ckDone  chan ckAnswer
}

// log returns the run's logger. It is built on first use: most runs log
// nothing, and With is costly.
func (r *taskRun) log() *slog.Logger {
	if r.logger == nil {
		r.logger = r.c.log.With("task_id", r.env.ID, "task", r.env.Task)
	}
	return r.logger
}

// start sends the task to the child. sent is false when it could not be
// sent; o is then the run's outcome.
func (r *taskRun) start() (o outcome, sent bool) {
	env := r.env
	err := r.c.send(&message{Type: typeRun, Run: r.n, Task: env.Task, TaskID: env.ID, Queue: env.Queue,
		Attempt: env.Attempt, Args: json.RawMessage(env.Args)})
	switch {
	case err == nil:
		r.done, r.exited, r.ckDone = r.tc.Done(), r.c.exited, make(chan ckAnswer, 1)
		return outcome{}, true
	case errors.Is(err, ErrFrameTooLarge):
		// Nothing was written: the child is as good as before.
		return outcome{err: stem.NoRetry(fmt.Errorf("stem: isolated task %s: arguments too large: %w", env.ID, err)), reuse: true}, false
	default:
		return r.fail(false, "stem: isolated task %s: %w", env.ID, err), false
	}
}

// cleanup stops the run's timers and waits for a progress checkpoint still
// being applied to tc. However the run ends (the child died, broke the
// protocol or was killed), that progress write finishes first: one that
// reached the worker after it recorded the outcome would follow (and could
// replace) it. A heartbeat or a lease extension under way is not waited
// for: it records nothing, and one waiting for an unresponsive broker must
// not hold the run. Queued checkpoints not yet started are dropped.
func (r *taskRun) cleanup() {
	if r.killT != nil {
		r.killT.Stop()
	}
	if r.drainT != nil {
		r.drainT.Stop()
	}
	if r.ckBusy && r.ckType == typeProgress {
		if r.p.hooks.ckWait != nil {
			r.p.hooks.ckWait()
		}
		<-r.ckDone
	}
}

// loop waits for the child's frames, the checkpoints' answers, tc's
// cancellation, kill-after grace periods, the kill timer and the child's
// exit, until the run is over.
func (r *taskRun) loop(killAfter stem.KillSignal) outcome {
	for {
		select {
		case in := <-r.c.msgs:
			if o, end := r.handle(in); end {
				return o
			}

		case a := <-r.ckDone:
			if o, end := r.checkpointDone(a); end {
				return o
			}

		case <-r.done:
			if o, end := r.cancelled(); end {
				return o
			}

		case d := <-killAfter:
			r.log().Info("isolated task will be killed unless it returns first", "kill_after", d)
			r.armKill(time.Now().Add(d))

		case <-r.killC:
			return r.killTimerFired()

		case <-r.exited:
			// The child is gone, but what it wrote last may still be in
			// the pipe: read on until its end, which comes at once unless
			// a process the task started holds the pipe open.
			r.exited = nil
			r.drainT = time.NewTimer(drainWait)
			r.drainC = r.drainT.C

		case <-r.drainC:
			return r.fail(false, "stem: isolated task %s: child %d exited mid-task", r.env.ID, r.c.pid)
		}
	}
}

// fail stops the child (synchronously: the task has not ended until its
// process has) and describes what happened. graceful gives a child that is
// exiting anyway the time to report its own exit status.
func (r *taskRun) fail(graceful bool, format string, args ...any) outcome {
	r.c.stop(graceful)
	err := r.c.describe(fmt.Errorf(format, args...), "")
	r.log().Warn("isolated task failed: child replaced", "err", err)
	return outcome{err: err}
}

// armKill makes the child be killed at at, unless an earlier kill is armed:
// a later, longer grace period never extends an earlier one.
func (r *taskRun) armKill(at time.Time) {
	if !r.killAt.IsZero() && !at.Before(r.killAt) {
		return
	}
	r.killAt = at
	if r.killT == nil {
		r.killT = time.NewTimer(time.Until(at))
		r.killC = r.killT.C
	} else {
		r.killT.Reset(time.Until(at))
	}
}

// armLimit keeps tc's time limit once tc was cancelled for another reason:
// the task's deadline stays a kill however it was cancelled.
func (r *taskRun) armLimit() {
	if dl, ok := r.tc.Deadline(); ok {
		r.limit = dl
		r.armKill(dl)
	}
}

// cancelled handles tc's cancellation: a time limit or a lost lease kills
// the child at once; a revoke is relayed, and a kill is armed only at the
// time limit; any other cause is relayed with ShutdownGrace to return.
func (r *taskRun) cancelled() (outcome, bool) {
	r.done = nil
	r.cause = context.Cause(r.tc)
	var rev *stem.RevokedError
	switch {
	case errors.Is(r.cause, stem.ErrTimeLimit), errors.Is(r.cause, stem.ErrLeaseLost):
		if o, end := r.peek(); end {
			return o, true
		}
		r.c.stop(false)
		r.log().Info("isolated task's child killed", "cause", r.cause)
		return outcome{err: fmt.Errorf("stem: isolated task %s: child %d killed: %w", r.env.ID, r.c.pid, r.cause)}, true
	case errors.As(r.cause, &rev):
		// Cooperative: the child stops at its next checkpoint, unless a
		// kill-after grace period or the time limit ends it first.
		r.armLimit()
	default:
		r.armKill(time.Now().Add(r.p.cfg.ShutdownGrace))
		r.armLimit()
	}
	if err := r.c.send(&message{Type: typeCancel, Run: r.n, Cause: encodeCause(r.cause)}); err != nil {
		return r.fail(false, "stem: isolated task %s: %w", r.env.ID, err), true
	}
	return outcome{}, false
}

// killTimerFired kills the child once its grace period or time limit is
// over, unless what it sent already ends the run.
func (r *taskRun) killTimerFired() outcome {
	if o, end := r.peek(); end {
		return o
	}
	r.c.stop(false)
	if !r.limit.IsZero() && !r.killAt.Before(r.limit) {
		r.log().Info("isolated task's child killed at its time limit", "cause", r.cause)
		return outcome{err: fmt.Errorf("stem: isolated task %s: child %d killed: %w (cancelled before: %w)",
			r.env.ID, r.c.pid, stem.ErrTimeLimit, r.cause)}
	}
	why := r.cause
	if why == nil {
		why = errors.New("stem: isolated: kill-after grace period over")
	}
	r.log().Info("isolated task's child killed after its grace period", "cause", why)
	return outcome{err: fmt.Errorf("stem: isolated task %s: child %d killed after its grace period: %w", r.env.ID, r.c.pid, why)}
}

// peek handles what the child sent already, before a kill: a result that
// arrived at the same instant as the kill wins.
func (r *taskRun) peek() (outcome, bool) {
	for range len(r.c.msgs) {
		if o, end := r.handle(<-r.c.msgs); end {
			return o, true
		}
	}
	return outcome{}, false
}

// handle deals with one inbound of the child; end reports that the run is
// over, with its outcome.
func (r *taskRun) handle(in inbound) (o outcome, end bool) {
	env, c := r.env, r.c
	if in.err != nil {
		switch {
		case eof(in.err) && r.cause != nil:
			return r.fail(true, "stem: isolated task %s: child %d exited after its task was cancelled: %w", env.ID, c.pid, r.cause), true
		case eof(in.err):
			return r.fail(true, "stem: isolated task %s: child %d exited mid-task", env.ID, c.pid), true
		default:
			return r.fail(false, "stem: isolated task %s: child %d: %w", env.ID, c.pid, in.err), true
		}
	}
	m := in.m
	switch m.Type {
	case typeHeartbeat, typeExtendLease, typeProgress:
		switch {
		case m.Run > r.n:
			return r.fail(false, "stem: isolated task %s: child %d: %w: %s for run %d during run %d",
				env.ID, c.pid, ErrFrameMalformed, m.Type, m.Run, r.n), true
		case m.Run < r.n:
			// A goroutine a previous task left behind.
			if err := r.reply(m, errReturned); err != nil {
				return r.fail(false, "stem: isolated task %s: %w", env.ID, err), true
			}
		case r.ckBusy:
			r.ckQueue = append(r.ckQueue, m)
		default:
			r.startCheckpoint(m)
		}
		return outcome{}, false
	case typeResult, typeError:
		if m.Run != r.n {
			return r.fail(false, "stem: isolated task %s: child %d: %w: %s for run %d during run %d",
				env.ID, c.pid, ErrFrameMalformed, m.Type, m.Run, r.n), true
		}
		if m.Type == typeResult {
			if len(m.Result) == 0 {
				return r.finish(json.RawMessage("null"), nil), true
			}
			return r.finish(m.Result, nil), true
		}
		if m.Error.Code == codePanic {
			// The child exits after a panic: its memory may be in any
			// state.
			r.log().Error("isolated task panicked: replacing its child", "panic", m.Error.Message, "stack", m.Error.Stack)
			c.stop(true)
			return outcome{err: taskError(m.Error)}, true
		}
		return r.finish(nil, taskError(m.Error)), true
	}
	return r.fail(false, "stem: isolated task %s: child %d: %w: %s during a run", env.ID, c.pid, ErrFrameMalformed, m.Type), true
}

// finish returns the task's outcome, reusing the child unless it does not
// take the answers to its last checkpoints.
func (r *taskRun) finish(res json.RawMessage, err error) outcome {
	if !r.settle() {
		r.c.stop(false)
		r.log().Warn("isolated child does not read its stdin: replaced")
		return outcome{res: res, err: err}
	}
	return outcome{res: res, err: err, reuse: true}
}

// startCheckpoint applies m to tc in a goroutine of its own, which
// answers on ckDone. Close waits for it, as for every goroutine of the
// pool; once the pool is closed, m is answered with ErrPoolClosed.
func (r *taskRun) startCheckpoint(m *message) {
	r.ckBusy, r.ckType = true, m.Type
	p := r.p
	p.mu.Lock()
	closed := p.closed
	if !closed {
		p.wg.Add(1)
	}
	p.mu.Unlock()
	if closed {
		r.ckDone <- ckAnswer{m: m, err: ErrPoolClosed}
		return
	}
	go func() {
		defer p.wg.Done()
		r.ckDone <- ckAnswer{m: m, err: checkpoint(r.tc, m)}
	}()
}

// checkpointDone answers the checkpoint that was applied and starts the
// next queued one.
func (r *taskRun) checkpointDone(a ckAnswer) (outcome, bool) {
	r.ckBusy = false
	if err := r.reply(a.m, a.err); err != nil {
		return r.fail(false, "stem: isolated task %s: %w", r.env.ID, err), true
	}
	if len(r.ckQueue) > 0 {
		m := r.ckQueue[0]
		r.ckQueue = r.ckQueue[1:]
		r.startCheckpoint(m)
	}
	return outcome{}, false
}

// reply sends the child the answer to its checkpoint m.
func (r *taskRun) reply(m *message, cerr error) error {
	return r.c.send(&message{Type: typeReply, Run: m.Run, Seq: m.Seq, Error: encodeCause(cerr)})
}

// settle runs the checkpoints still pending once the task returned, in
// order, and answers them: they take effect before the outcome, and the
// child, reused, has no request left unanswered. It reports whether the
// child took the answers.
func (r *taskRun) settle() bool {
	if r.ckBusy {
		a := <-r.ckDone
		r.ckBusy = false
		if r.reply(a.m, a.err) != nil {
			return false
		}
	}
	for _, m := range r.ckQueue {
		if r.reply(m, checkpoint(r.tc, m)) != nil {
			return false
		}
	}
	r.ckQueue = nil
	return true
}

// ckAnswer is the worker's answer to one of a child's checkpoints.
type ckAnswer struct {
	m   *message
	err error
}

// maxExtendLease caps what a child's extendLease asks for: a child cannot
// make the worker keep its task leased for longer in one request.
const maxExtendLease = 24 * time.Hour

// checkpoint relays a child's checkpoint to the worker's task context and
// returns its answer.
func checkpoint(tc *stem.TaskContext, m *message) error {
	switch m.Type {
	case typeHeartbeat:
		return tc.Heartbeat()
	case typeExtendLease:
		return tc.ExtendLease(time.Duration(min(m.Ms, maxExtendLease.Milliseconds())) * time.Millisecond)
	default:
		var data any
		if len(m.Data) > 0 {
			data = m.Data
		}
		return tc.Progress(*m.Percent, data)
	}
}
