package stem_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// ExtendLease never shortens a task's lease: a task of a worker with a
// 30 s lease that asks for a millisecond keeps its 30 s, and another
// consumer claims nothing while it runs.
func TestExtendLeaseNeverShortensTheLease(t *testing.T) {
	e := newEnv(t)
	extended := make(chan error, 1)
	release := make(chan struct{})
	stem.Register(e.reg, "short-ask", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		extended <- tc.ExtendLease(time.Millisecond)
		<-release
		return "done", nil
	}, stem.TaskOptions{})
	e.startWorker(stem.WorkerConfig{Lease: 30 * time.Second})
	id := e.enqueue("short-ask", nil, stem.EnqueueOptions{})
	if err := <-extended; err != nil {
		t.Fatalf("ExtendLease: %v", err)
	}
	for range 5 {
		ds, err := e.broker.Claim(context.Background(), stemdriver.ClaimRequest{Queues: []string{"default"},
			Consumer: "thief", Max: 1, Lease: time.Second, Wait: 20 * time.Millisecond})
		if err != nil || len(ds) != 0 {
			close(release)
			t.Fatalf("another consumer claimed the running task: %v %v", ds, err)
		}
	}
	close(release)
	if r := e.wait(id); r.State != stemtype.StateSucceeded {
		t.Fatalf("got %+v", r)
	}
}

// ExtendLease of an inline task is bounded by the task's context: once
// the task is cancelled (here: its time limit) a call that reached the
// worker ends with the task's cancellation cause instead of waiting for a
// broker that does not answer.
func TestInlineExtendLeaseFollowsTaskContext(t *testing.T) {
	e := newEnv(t)
	stem.Register(e.reg, "stuck-extend", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		return nil, tc.ExtendLease(time.Minute)
	}, stem.TaskOptions{TimeLimit: 50 * time.Millisecond})
	b := &hangingExtend{Broker: e.broker, causes: make(chan error, 1)}
	e.broker = b
	e.startWorker(stem.WorkerConfig{Lease: 30 * time.Second})
	id := e.enqueue("stuck-extend", nil, stem.EnqueueOptions{})
	if cause := <-b.causes; !errors.Is(cause, stem.ErrTimeLimit) {
		t.Fatalf("the stuck ExtendLease ended with %v, want the task's cause %v", cause, stem.ErrTimeLimit)
	}
	if r := e.wait(id); r.State != stemtype.StateFailed || r.Error == nil || r.Error.Kind != "time_limit" {
		t.Fatalf("got %+v", r)
	}
}

// hangingExtend's ExtendLease for a lease of a minute blocks until its
// context ends, a broker that stopped answering, and reports the
// context's cause.
type hangingExtend struct {
	stemdriver.Broker
	causes chan error
}

func (b *hangingExtend) ExtendLease(ctx context.Context, d stemdriver.Delivery, l time.Duration) error {
	if l == time.Minute {
		<-ctx.Done()
		select {
		case b.causes <- context.Cause(ctx): // the first to end: the task's call
		default: // the renewer's, at shutdown
		}
		return ctx.Err()
	}
	return b.Broker.ExtendLease(ctx, d, l)
}
