package stem

import (
	"errors"
	"fmt"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// ErrTaskRevoked is the cause of a task context cancelled by a terminate
// revoke, and the error that TaskContext.Heartbeat, ExtendLease and Progress
// return once such a revoke reached the task. Match it with errors.Is.
var ErrTaskRevoked = errors.New("stem: task revoked")

// ErrTimeLimit is the cause of a task context cancelled because the task ran
// past its TaskOptions.TimeLimit.
var ErrTimeLimit = errors.New("stem: task time limit exceeded")

// ErrWorkerShutdown is the cause of a task context cancelled because the
// worker is shutting down and the task outlived the shutdown grace period.
// Such a task is released to the broker, not failed.
var ErrWorkerShutdown = errors.New("stem: worker shutting down")

// ErrShutdownRequested is the cause of a worker's run context when a
// shutdown control command stopped it (stem worker shutdown).
var ErrShutdownRequested = errors.New("stem: shutdown requested by a control command")

// ErrLeaseLost is the cause of a task context cancelled because the worker
// could not renew the task's lease and another worker may have claimed it.
var ErrLeaseLost = stemdriver.ErrLeaseLost

// ErrUnknownTask is recorded as the failure of a task whose name no handler
// is registered for, once its retries for that reason are spent
// (WorkerConfig.UnknownTaskRetries); its retries record it too.
var ErrUnknownTask = errors.New("stem: unknown task")

// ErrNotFound is returned when a task has no recorded state.
var ErrNotFound = stemdriver.ErrNotFound

// RevokedError is the cause carried by a context cancelled by a terminate
// revoke. It matches ErrTaskRevoked with errors.Is.
type RevokedError struct {
	TaskID      string
	Reason      string
	RequestedBy string
	IssuedAt    time.Time
}

// Error describes the revoke.
func (e *RevokedError) Error() string {
	msg := "stem: task " + e.TaskID + " revoked"
	if e.RequestedBy != "" {
		msg += " by " + e.RequestedBy
	}
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	return msg
}

// Unwrap returns ErrTaskRevoked.
func (e *RevokedError) Unwrap() error { return ErrTaskRevoked }

// noRetryError marks an error as final.
type noRetryError struct{ err error }

func (e *noRetryError) Error() string { return e.err.Error() }
func (e *noRetryError) Unwrap() error { return e.err }

// NoRetry wraps err so that the task fails at once, whatever retries remain.
func NoRetry(err error) error {
	if err == nil {
		return nil
	}
	return &noRetryError{err: err}
}

// IsNoRetry reports whether err (or an error it wraps) was marked by
// NoRetry.
func IsNoRetry(err error) bool {
	var nr *noRetryError
	return errors.As(err, &nr)
}

// RetryDelay returns the delay of the RetryAfter mark in err's chain.
func RetryDelay(err error) (time.Duration, bool) {
	var ra *retryAfterError
	if errors.As(err, &ra) {
		return ra.delay, true
	}
	return 0, false
}

// PanicError is a handler panic recovered by the worker (or reported by an
// isolated task's child process). The worker records it as a failed attempt
// of kind "panic".
type PanicError struct {
	// Value is what the handler panicked with.
	Value any
	// Stack is the panicking goroutine's stack, when known.
	Stack []byte
}

// Error describes the panic.
func (e *PanicError) Error() string { return fmt.Sprintf("stem: task panicked: %v", e.Value) }

// retryAfterError asks for a retry after a given delay.
type retryAfterError struct {
	err   error
	delay time.Duration
}

func (e *retryAfterError) Error() string {
	return fmt.Sprintf("%v (retry in %s)", e.err, e.delay)
}
func (e *retryAfterError) Unwrap() error { return e.err }

// RetryAfter wraps err so that, if retries remain, the task runs again after
// delay instead of the delay its retry policy would choose.
func RetryAfter(delay time.Duration, err error) error {
	if err == nil {
		err = errors.New("stem: retry requested")
	}
	return &retryAfterError{err: err, delay: delay}
}

// revokedError is the cause a terminate revoke cancels its task with, and
// the error a revoked task is recorded cancelled with.
func revokedError(rec stemtype.RevokeRecord) *RevokedError {
	return &RevokedError{TaskID: rec.TaskID, Reason: rec.Reason, RequestedBy: rec.RequestedBy, IssuedAt: rec.IssuedAt}
}

// revokedMeta returns the result metadata recorded for a revoked task: the
// revoke's reason, requester and time.
func revokedMeta(reason, by string, at time.Time) map[string]string {
	return map[string]string{
		stemtype.MetaRevokedReason: reason,
		stemtype.MetaRevokedBy:     by,
		stemtype.MetaRevokedAt:     at.UTC().Format(time.RFC3339Nano),
	}
}
