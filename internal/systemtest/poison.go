package systemtest

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// The user code the worker calls after a handler returned (a result's
// MarshalJSON, an error's Error, Unwrap or As, a RetryPolicy) can panic
// like the handler itself. Such a panic outside the handler must not take
// the worker down: the task would be a poison pill, its redelivery
// crashing every worker of the fleet in turn, and every task those
// workers ran would be lost to its lease.

// panicResult panics when encoded.
type panicResult struct{ p *struct{ Name string } }

func (r panicResult) MarshalJSON() ([]byte, error) { return []byte(`"` + r.p.Name + `"`), nil }

// nilError is an error type whose methods dereference their receiver: a
// handler returning a nil *nilError as its error (the typed-nil mistake)
// hands the worker an error whose Error panics.
type nilError struct{ msg string }

func (e *nilError) Error() string { return e.msg }

// panicPolicy is a retry policy that panics.
type panicPolicy struct{}

func (panicPolicy) NextRetry(attempt int) time.Duration {
	delays := []time.Duration{}
	return delays[attempt] // index out of range
}

// awaitAlive checks that the worker still runs tasks after a poisoned one.
func (d *deployment) awaitAlive(t *testing.T) {
	t.Helper()
	stem.Register(d.reg, "alive", func(*stem.TaskContext, struct{}) (any, error) { return "yes", nil }, stem.TaskOptions{})
	if r := d.wait(d.enqueue("alive", stem.EnqueueOptions{})); r.State != stemtype.StateSucceeded {
		t.Fatalf("after the poisoned task a task ended %+v", r)
	}
}

// A result that panics when encoded fails its task, without retry (it
// would panic again), and the worker keeps working.
func testResultThatPanicsWhenEncodedFailsTheTask(t *testing.T, h Harness) {
	d := open(t, h)
	stem.Register(d.reg, "poison-result", func(*stem.TaskContext, stem.Args) (any, error) { return panicResult{}, nil },
		stem.TaskOptions{MaxRetries: 3})
	d.startWorker(stem.WorkerConfig{})
	r := d.wait(d.enqueue("poison-result", stem.EnqueueOptions{}))
	if r.State != stemtype.StateFailed || r.Attempt != 0 || r.Error == nil || r.Error.Kind != "panic" ||
		!strings.Contains(r.Error.Message, "encode task result") {
		t.Fatalf("got %+v (error %+v), want failed at once, kind panic, on encoding the result", r, r.Error)
	}
	d.awaitAlive(t)
}

// A handler that returns a typed nil error whose Error panics fails its
// task, without retry, and the worker keeps working.
func testErrorThatPanicsFailsTheTask(t *testing.T, h Harness) {
	d := open(t, h)
	stem.Register(d.reg, "poison-error", func(*stem.TaskContext, stem.Args) (any, error) {
		var e *nilError
		return nil, e
	}, stem.TaskOptions{MaxRetries: 3})
	d.startWorker(stem.WorkerConfig{})
	r := d.wait(d.enqueue("poison-error", stem.EnqueueOptions{}))
	if r.State != stemtype.StateFailed || r.Attempt != 0 || r.Error == nil || r.Error.Kind != "panic" {
		t.Fatalf("got %+v (error %+v), want failed at once, kind panic", r, r.Error)
	}
	d.awaitAlive(t)
}

// A retry policy that panics does not stop the retry: the worker falls
// back to the default policy (a second or so), and keeps working.
func testRetryPolicyThatPanicsFallsBackToDefault(t *testing.T, h Harness) {
	d := open(t, h)
	stem.Register(d.reg, "poison-policy", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		if tc.Attempt() == 0 {
			return nil, errors.New("first attempt fails")
		}
		return "second", nil
	}, stem.TaskOptions{MaxRetries: 1, RetryPolicy: panicPolicy{}})
	d.startWorker(stem.WorkerConfig{})
	r := d.wait(d.enqueue("poison-policy", stem.EnqueueOptions{}))
	if r.State != stemtype.StateSucceeded || r.Attempt != 1 {
		t.Fatalf("got %+v (error %+v), want succeeded on the retry", r, r.Error)
	}
	d.awaitAlive(t)
}
