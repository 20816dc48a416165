package isolated

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/stem-go/stem"
)

// ProtocolVersion is the version of the worker-child protocol this package
// speaks (docs/isolated-protocol.md). The worker offers it in EnvChild; the
// child answers with it in its hello.
const ProtocolVersion = 1

// Environment variables a pool sets on the children it starts.
const (
	// EnvChild marks a process as an isolated child; its value is the
	// protocol version the worker offers. ServeIfChild and stemcli.Main
	// serve the child role when it is set, and unset it so that processes
	// the task starts do not inherit it.
	EnvChild = "STEM_ISOLATED_CHILD"
	// EnvMaxFrame is the largest frame payload the worker accepts, in
	// bytes; the child's frames must not exceed it.
	EnvMaxFrame = "STEM_ISOLATED_MAX_FRAME"
	// EnvLogLevel is the lowest level the worker's logger records
	// (DEBUG, INFO, WARN or ERROR), so that the child does not format
	// records the worker would drop.
	EnvLogLevel = "STEM_ISOLATED_LOG_LEVEL"
)

// Message types. Child to worker: hello, heartbeat, extendLease, progress,
// result, error. Worker to child: run, cancel, reply.
const (
	typeHello       = "hello"
	typeRun         = "run"
	typeHeartbeat   = "heartbeat"
	typeExtendLease = "extendLease"
	typeProgress    = "progress"
	typeReply       = "reply"
	typeCancel      = "cancel"
	typeResult      = "result"
	typeError       = "error"
)

// Error codes carried by wireError.Code.
const (
	codeRevoked     = "revoked"      // a terminate revoke (ErrTaskRevoked)
	codeTimeLimit   = "time_limit"   // ErrTimeLimit
	codeShutdown    = "shutdown"     // ErrWorkerShutdown
	codeLeaseLost   = "lease_lost"   // ErrLeaseLost
	codeCanceled    = "canceled"     // context.Canceled without a cause
	codeHandler     = "handler"      // the task returned an error
	codePanic       = "panic"        // the task panicked
	codeUnknownTask = "unknown_task" // the child has no isolated entrypoint by that name
	codeError       = "error"        // any other error
)

// message is every protocol message: Type says which fields are meaningful.
type message struct {
	Type string `json:"type"`

	// hello
	Protocol int      `json:"protocol,omitempty"`
	PID      int      `json:"pid,omitempty"`
	Tasks    []string `json:"tasks,omitempty"`

	// Run numbers the runs of one child from 1; every message about a run
	// carries it.
	Run uint64 `json:"run,omitempty"`
	// Seq numbers a child's checkpoint requests; the reply carries it.
	Seq uint64 `json:"seq,omitempty"`

	// run
	Task    string          `json:"task,omitempty"`
	TaskID  string          `json:"taskId,omitempty"`
	Queue   string          `json:"queue,omitempty"`
	Attempt int             `json:"attempt,omitempty"`
	Args    json.RawMessage `json:"args,omitempty"`

	// extendLease
	Ms int64 `json:"ms,omitempty"`
	// progress
	Percent *float64        `json:"percent,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"`

	// result
	Result json.RawMessage `json:"result,omitempty"`
	// error (child), reply (worker): nil in a reply means success.
	Error *wireError `json:"error,omitempty"`
	// cancel
	Cause *wireError `json:"cause,omitempty"`
}

// wireError is an error or a cancellation cause on the wire.
type wireError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// NoRetry asks the worker to fail the task at once (stem.NoRetry).
	NoRetry bool `json:"noRetry,omitempty"`
	// RetryAfterMs asks for a retry after this delay (stem.RetryAfter).
	RetryAfterMs int64 `json:"retryAfterMs,omitempty"`
	// Stack is the goroutine stack of a panic.
	Stack string `json:"stack,omitempty"`
	// Revoke details a code "revoked".
	Revoke *wireRevoke `json:"revoke,omitempty"`
}

// wireRevoke carries the fields of a *stem.RevokedError.
type wireRevoke struct {
	TaskID      string    `json:"taskId"`
	Reason      string    `json:"reason,omitempty"`
	RequestedBy string    `json:"requestedBy,omitempty"`
	IssuedAt    time.Time `json:"issuedAt,omitzero"`
}

// decodeMessage decodes and validates one frame's payload: a JSON object
// whose type is one of want, with the fields that type requires.
func decodeMessage(payload []byte, want ...string) (*message, error) {
	var m message
	if err := json.Unmarshal(payload, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFrameMalformed, err)
	}
	ok := false
	for _, t := range want {
		ok = ok || m.Type == t
	}
	if !ok {
		return nil, fmt.Errorf("%w: unexpected message type %q", ErrFrameMalformed, m.Type)
	}
	switch m.Type {
	case typeHello:
		if m.Protocol <= 0 {
			return nil, fmt.Errorf("%w: hello without a protocol version", ErrFrameMalformed)
		}
	case typeRun:
		if m.Run == 0 || m.Task == "" {
			return nil, fmt.Errorf("%w: run without a run number or task", ErrFrameMalformed)
		}
	case typeHeartbeat, typeExtendLease, typeProgress:
		if m.Run == 0 || m.Seq == 0 {
			return nil, fmt.Errorf("%w: %s without a run or sequence number", ErrFrameMalformed, m.Type)
		}
		if m.Type == typeExtendLease && m.Ms <= 0 {
			return nil, fmt.Errorf("%w: extendLease with a non-positive duration", ErrFrameMalformed)
		}
		if m.Type == typeProgress && m.Percent == nil {
			return nil, fmt.Errorf("%w: progress without a percent", ErrFrameMalformed)
		}
	case typeReply:
		if m.Seq == 0 {
			return nil, fmt.Errorf("%w: reply without a sequence number", ErrFrameMalformed)
		}
	case typeCancel:
		if m.Run == 0 || m.Cause == nil {
			return nil, fmt.Errorf("%w: cancel without a run number or cause", ErrFrameMalformed)
		}
	case typeResult:
		if m.Run == 0 {
			return nil, fmt.Errorf("%w: result without a run number", ErrFrameMalformed)
		}
	case typeError:
		if m.Run == 0 || m.Error == nil {
			return nil, fmt.Errorf("%w: error without a run number or error", ErrFrameMalformed)
		}
	}
	return &m, nil
}

// encodeMessage returns m's payload.
func encodeMessage(m *message) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("stem: isolated: encode %s message: %w", m.Type, err)
	}
	return b, nil
}

// encodeCause turns a cancellation cause or checkpoint error into its wire
// form; nil stays nil.
func encodeCause(err error) *wireError {
	if err == nil {
		return nil
	}
	w := &wireError{Code: codeError, Message: err.Error()}
	var rev *stem.RevokedError
	switch {
	case errors.As(err, &rev):
		w.Code = codeRevoked
		w.Revoke = &wireRevoke{TaskID: rev.TaskID, Reason: rev.Reason, RequestedBy: rev.RequestedBy, IssuedAt: rev.IssuedAt}
	case errors.Is(err, stem.ErrTaskRevoked):
		w.Code = codeRevoked
	case errors.Is(err, stem.ErrTimeLimit):
		w.Code = codeTimeLimit
	case errors.Is(err, stem.ErrWorkerShutdown):
		w.Code = codeShutdown
	case errors.Is(err, stem.ErrLeaseLost):
		w.Code = codeLeaseLost
	case errors.Is(err, context.Canceled):
		w.Code = codeCanceled
	}
	return w
}

// decodeCause turns a wire cause back into an error that matches the same
// sentinels (errors.Is) as the one encodeCause was given.
func decodeCause(w *wireError) error {
	if w == nil {
		return nil
	}
	switch w.Code {
	case codeRevoked:
		r := &stem.RevokedError{}
		if w.Revoke != nil {
			r.TaskID, r.Reason, r.RequestedBy, r.IssuedAt = w.Revoke.TaskID, w.Revoke.Reason, w.Revoke.RequestedBy, w.Revoke.IssuedAt
		}
		return r
	case codeTimeLimit:
		return stem.ErrTimeLimit
	case codeShutdown:
		return stem.ErrWorkerShutdown
	case codeLeaseLost:
		return stem.ErrLeaseLost
	case codeCanceled:
		return context.Canceled
	}
	return &remoteError{msg: w.Message}
}

// remoteError is an error that crossed the pipe with nothing but its text.
type remoteError struct{ msg string }

func (e *remoteError) Error() string { return e.msg }

// encodeTaskError turns a task's error into the wire form of an error
// message, keeping the NoRetry and RetryAfter marks.
func encodeTaskError(err error) *wireError {
	w := encodeCause(err)
	if w.Code == codeError {
		w.Code = codeHandler
	}
	w.NoRetry = stem.IsNoRetry(err)
	if d, ok := stem.RetryDelay(err); ok {
		w.RetryAfterMs = max(1, d.Milliseconds())
	}
	return w
}

// taskError rebuilds, in the worker, the error a child's task returned:
// errors.Is matches the same stem sentinels, and NoRetry and RetryAfter
// keep their effect on the worker's retry decision.
func taskError(w *wireError) error {
	var err error
	switch w.Code {
	case codeRevoked, codeTimeLimit, codeShutdown, codeLeaseLost, codeCanceled:
		err = fmt.Errorf("stem: isolated task: %w", decodeCause(w))
	case codePanic:
		err = &stem.PanicError{Value: "in isolated child: " + w.Message}
	default:
		err = &remoteError{msg: w.Message}
	}
	switch {
	case w.NoRetry || w.Code == codeUnknownTask:
		err = stem.NoRetry(err)
	case w.RetryAfterMs > 0:
		d := time.Duration(w.RetryAfterMs) * time.Millisecond
		// RetryAfter adds the delay to the message, which already says it.
		if re, ok := err.(*remoteError); ok {
			re.msg = strings.TrimSuffix(re.msg, fmt.Sprintf(" (retry in %s)", d))
		}
		err = stem.RetryAfter(d, err)
	}
	return err
}
