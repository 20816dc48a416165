package stem

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// TaskSignals carries a running task's checkpoints to whoever supervises it:
// the worker for inline tasks, the pipe to the worker for isolated ones, a
// recorder in package stemtest. Implementations return an error matching
// ErrTaskRevoked once a terminate revoke reached the task. Handlers never
// see it: they call the TaskContext's methods.
type TaskSignals interface {
	Heartbeat() error
	ExtendLease(d time.Duration) error
	Progress(percent float64, data json.RawMessage) error
}

// TaskInfo identifies a running task attempt, for NewTaskContext.
type TaskInfo struct {
	ID      string
	Task    string
	Queue   string
	Attempt int
}

// TaskContext is what a handler receives: a context.Context that is
// cancelled, with a cause, when the task is revoked with terminate
// (ErrTaskRevoked), runs past its time limit (ErrTimeLimit) or outlives a
// worker shutdown (ErrWorkerShutdown), plus the task's identity and its
// checkpoints.
//
// Long handlers should call Heartbeat, ExtendLease or Progress regularly:
// each is a checkpoint that returns an error matching ErrTaskRevoked once the
// task was revoked with terminate, and handlers should return promptly when
// any of them fails or the context is done.
type TaskContext struct {
	context.Context
	info TaskInfo
	sig  TaskSignals
	base *slog.Logger

	logOnce sync.Once
	logger  *slog.Logger
}

// NewTaskContext builds a TaskContext over ctx whose checkpoints go to sig
// (nil: they only check ctx) and whose Logger builds on logger (nil:
// slog.Default()). Workers build the TaskContext of each task; this is for
// code that supervises tasks itself: the child process of an isolated task
// (package isolated) and test harnesses (package stemtest, which tests of
// handlers should use rather than this).
func NewTaskContext(ctx context.Context, info TaskInfo, sig TaskSignals, logger *slog.Logger) *TaskContext {
	if logger == nil {
		logger = slog.Default()
	}
	return &TaskContext{Context: ctx, info: info, sig: sig, base: logger}
}

// TaskID returns the task's id.
func (tc *TaskContext) TaskID() string { return tc.info.ID }

// TaskName returns the task's registered name.
func (tc *TaskContext) TaskName() string { return tc.info.Task }

// Queue returns the queue the task was claimed from.
func (tc *TaskContext) Queue() string { return tc.info.Queue }

// Attempt returns the attempt number: 0 for the first run, n for the n-th
// retry.
func (tc *TaskContext) Attempt() int { return tc.info.Attempt }

// Logger returns a logger annotated with the task's id, name and attempt.
func (tc *TaskContext) Logger() *slog.Logger {
	// Built on first use: most tasks never log, and With costs an
	// allocation-heavy handler clone per task.
	tc.logOnce.Do(func() {
		tc.logger = tc.base.With("task_id", tc.info.ID, "task", tc.info.Task, "attempt", tc.info.Attempt)
	})
	return tc.logger
}

// checkpoint returns the cancellation cause once the context is done.
func (tc *TaskContext) checkpoint() error {
	if tc.Err() == nil {
		return nil
	}
	if cause := context.Cause(tc.Context); cause != nil {
		return cause
	}
	return tc.Err()
}

// Heartbeat tells the worker the task is alive. It returns an error matching
// ErrTaskRevoked once a terminate revoke reached the task, or the context's
// cause once it is otherwise cancelled.
func (tc *TaskContext) Heartbeat() error {
	if err := tc.checkpoint(); err != nil {
		return err
	}
	if tc.sig == nil {
		return nil
	}
	return tc.sig.Heartbeat()
}

// ExtendLease asks the worker to keep the task leased for at least d from
// now, for a task that expects to hold its lease longer than its options
// say. It never shortens the lease: a d below the task's lease
// (TaskOptions.Lease, else the worker's) keeps that lease. The worker's
// call to the broker is bounded by the task's context. It is a checkpoint
// like Heartbeat.
func (tc *TaskContext) ExtendLease(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("stem: ExtendLease: non-positive duration %s", d)
	}
	if err := tc.checkpoint(); err != nil {
		return err
	}
	if tc.sig == nil {
		return nil
	}
	return tc.sig.ExtendLease(d)
}

// Progress records the task's completion percentage (0 to 100) and optional
// data (encoded as JSON), visible in task status and worker inspect. A
// percentage outside 0..100, or NaN (as 0/0 gives), is an error and
// records nothing. It is a checkpoint like Heartbeat.
func (tc *TaskContext) Progress(percent float64, data any) error {
	if !(percent >= 0 && percent <= 100) { // NaN fails both
		return fmt.Errorf("stem: Progress: percent %v outside 0..100", percent)
	}
	if err := tc.checkpoint(); err != nil {
		return err
	}
	var raw json.RawMessage
	if data != nil {
		b, err := json.Marshal(data)
		if err != nil {
			return fmt.Errorf("stem: Progress: encode data: %w", err)
		}
		raw = b
	}
	if tc.sig == nil {
		return nil
	}
	return tc.sig.Progress(percent, raw)
}
