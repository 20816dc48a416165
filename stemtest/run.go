package stemtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/jsonvalue"
	"github.com/stem-go/stem/stemtype"
)

// RunOptions describe the attempt Run simulates. The zero value is the
// first attempt of a task with the task's registered options.
type RunOptions struct {
	// ID is the task id the handler sees. Default: "stemtest-task".
	ID string
	// Queue is the queue the handler sees. Default: the task's queue, else
	// "default".
	Queue string
	// Attempt is the attempt number the handler sees: 0 for the first run,
	// n for the n-th retry. Whether a failure would be retried depends on
	// it, as in a worker.
	Attempt int
	// MaxRetries, when non-nil, overrides the task's Options.MaxRetries,
	// as stem.EnqueueOptions.MaxRetries does.
	MaxRetries *int
	// TerminateAt, when positive, simulates a terminate revoke reaching
	// the task during its TerminateAt-th checkpoint (1 for the first call
	// of Heartbeat, ExtendLease or Progress that passes its own checks):
	// that checkpoint returns an error matching stem.ErrTaskRevoked (a
	// *stem.RevokedError), the task's context is cancelled with it as
	// cause, and every later checkpoint returns it too, as in a worker.
	// Use it to test that a handler stops when it is terminated.
	TerminateAt int
	// Logger is what TaskContext.Logger builds on. Default: a text logger
	// writing to the test's output.
	Logger *slog.Logger
}

// Outcome is what one attempt of a task did, and what a worker would
// record of it.
type Outcome struct {
	// State is the state a worker would record: stemtype.StateSucceeded,
	// StateRetry (the attempt failed and retries remain), StateFailed or
	// StateCancelled (a terminate reached the task; never retried).
	State stemtype.State
	// Result is the handler's result encoded as the worker stores it; nil
	// unless State is succeeded (and nil then for a nil result).
	Result json.RawMessage
	// Err is why the attempt did not succeed: the handler's error, a
	// *stem.PanicError for a panic, an error matching stem.ErrTimeLimit
	// when the task ran past its Options.TimeLimit, or the failure to
	// encode the result. Nil when State is succeeded.
	Err error
	// RetryIn is the delay before the next attempt when State is retry:
	// the delay of a stem.RetryAfter error, else the task's retry policy's
	// (which may be random, with jitter). Zero otherwise.
	RetryIn time.Duration
	// Heartbeats counts the calls of TaskContext.Heartbeat that reached
	// the worker.
	Heartbeats int
	// LeaseExtensions are the durations passed to TaskContext.ExtendLease
	// that reached the worker, in order.
	LeaseExtensions []time.Duration
	// Progress are the reports of TaskContext.Progress that reached the
	// worker, in order.
	Progress []stemtype.Progress
}

// Decode unmarshals o.Result into v. It fails when the attempt did not
// succeed.
func (o *Outcome) Decode(v any) error {
	if o.State != stemtype.StateSucceeded {
		return fmt.Errorf("stemtest: decode result: task did not succeed (%s): %v", o.State, o.Err)
	}
	if err := json.Unmarshal(o.Result, v); err != nil {
		return fmt.Errorf("stemtest: decode result: %w", err)
	}
	return nil
}

// Run runs one attempt of the task registered in reg under name, in the
// test's goroutine, with args encoded as stem.Client.Enqueue encodes them,
// and returns what it did. The handler's TaskContext records its
// checkpoints (Outcome.Heartbeats, LeaseExtensions, Progress); its context
// is the test's context, with the task's Options.TimeLimit applied. A task
// registered with Options.Isolated runs its entrypoint in the test's
// process, as the child process would.
//
// Run decides the outcome as a worker does: a panic is a failed attempt;
// an error marked with stem.NoRetry, or a failure with no retries left, is
// final (failed); a terminate (RunOptions.TerminateAt) cancels the task
// whatever it returns. A name that is not registered, or arguments that do
// not encode, fail the test.
func Run(t testing.TB, reg *stem.Registry, name string, args any, opts RunOptions) *Outcome {
	t.Helper()
	task, ok := reg.Lookup(name)
	if !ok {
		t.Fatalf("stemtest: task %q is not registered", name)
	}
	raw, err := jsonvalue.Encode[stem.Args](args)
	if err != nil {
		t.Fatalf("stemtest: encode arguments of %s: %v", name, err)
	}
	if opts.ID == "" {
		opts.ID = "stemtest-task"
	}
	if opts.Queue == "" {
		opts.Queue = task.Options.Queue
	}
	if opts.Queue == "" {
		opts.Queue = stemtype.DefaultQueue
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	}

	ctx, cancel := context.WithCancelCause(t.Context())
	defer cancel(nil)
	if task.Options.TimeLimit > 0 {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeoutCause(ctx, task.Options.TimeLimit, stem.ErrTimeLimit)
		defer stop()
	}
	rec := &recorder{id: opts.ID, terminateAt: opts.TerminateAt, cancel: cancel}
	tc := stem.NewTaskContext(ctx, stem.TaskInfo{ID: opts.ID, Task: name, Queue: opts.Queue, Attempt: opts.Attempt}, rec, opts.Logger)
	result, err := invoke(tc, task, stem.Args(raw))

	out := rec.outcome()
	var rev *stem.RevokedError
	cause := context.Cause(ctx)
	switch {
	case errors.As(cause, &rev):
		out.State, out.Err = stemtype.StateCancelled, err
		if out.Err == nil {
			out.Err = rev
		}
		return out
	case err == nil:
		res, encErr := jsonvalue.Encode[stem.Args](result)
		if encErr != nil {
			out.State, out.Err = stemtype.StateFailed, fmt.Errorf("stem: encode task result: %w", encErr)
			return out
		}
		out.State, out.Result = stemtype.StateSucceeded, res
		return out
	}
	var pe *stem.PanicError
	if !errors.As(err, &pe) && (errors.Is(cause, stem.ErrTimeLimit) || errors.Is(err, stem.ErrTimeLimit)) {
		err = fmt.Errorf("%w (%s)", stem.ErrTimeLimit, task.Options.TimeLimit)
	}
	out.Err = err
	maxRetries := task.Options.MaxRetries
	if opts.MaxRetries != nil {
		maxRetries = *opts.MaxRetries
	}
	if stem.IsNoRetry(err) || opts.Attempt >= maxRetries {
		out.State = stemtype.StateFailed
		return out
	}
	out.State = stemtype.StateRetry
	if d, ok := stem.RetryDelay(err); ok && d > 0 {
		out.RetryIn = d
	} else {
		policy := task.Options.RetryPolicy
		if policy == nil {
			policy = stem.DefaultRetryPolicy()
		}
		out.RetryIn = policy.NextRetry(opts.Attempt + 1)
	}
	return out
}

// invoke runs the task's handler or isolated entrypoint, turning a panic
// into a *stem.PanicError.
func invoke(tc *stem.TaskContext, task *stem.Task, args stem.Args) (result any, err error) {
	defer func() {
		if v := recover(); v != nil {
			result, err = nil, &stem.PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	if task.IsIsolated() {
		return task.Isolated(tc, args)
	}
	return task.Run(tc, args)
}

// recorder is the stem.TaskSignals of a task under Run: it records the
// checkpoints and delivers the simulated terminate.
type recorder struct {
	id          string
	terminateAt int
	cancel      context.CancelCauseFunc

	mu         sync.Mutex // a handler may checkpoint from its own goroutines
	n          int
	revoked    *stem.RevokedError
	heartbeats int
	extensions []time.Duration
	progress   []stemtype.Progress
}

// checkpoint counts a checkpoint and returns the terminate's error once it
// was delivered.
func (r *recorder) checkpoint() error {
	r.n++
	if r.revoked == nil && r.terminateAt > 0 && r.n >= r.terminateAt {
		r.revoked = &stem.RevokedError{TaskID: r.id, Reason: "terminated by stemtest", RequestedBy: "stemtest",
			IssuedAt: time.Now().UTC()}
		r.cancel(r.revoked)
	}
	if r.revoked != nil {
		return r.revoked
	}
	return nil
}

// Heartbeat implements stem.TaskSignals.
func (r *recorder) Heartbeat() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.checkpoint(); err != nil {
		return err
	}
	r.heartbeats++
	return nil
}

// ExtendLease implements stem.TaskSignals.
func (r *recorder) ExtendLease(d time.Duration) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.checkpoint(); err != nil {
		return err
	}
	r.extensions = append(r.extensions, d)
	return nil
}

// Progress implements stem.TaskSignals.
func (r *recorder) Progress(pct float64, data json.RawMessage) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.checkpoint(); err != nil {
		return err
	}
	r.progress = append(r.progress, stemtype.Progress{Percent: pct, Data: data, At: time.Now().UTC()})
	return nil
}

// outcome returns the checkpoints recorded so far.
func (r *recorder) outcome() *Outcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	return &Outcome{Heartbeats: r.heartbeats, LeaseExtensions: r.extensions, Progress: r.progress}
}
