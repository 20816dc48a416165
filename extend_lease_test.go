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

// ExtendLease of an inline task is bounded by the task's context: once
// the task is cancelled (here: its time limit) a call that reached the
// worker ends with the task's cancellation cause instead of waiting for a
// broker that does not answer.
func TestInlineExtendLeaseFollowsTaskContext(t *testing.T) {
	e := newEnv(t)
	e.reg.MustAdd(stem.Task{Name: "stuck-extend", Options: stem.TaskOptions{TimeLimit: 50 * time.Millisecond},
		Run: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
			return nil, tc.ExtendLease(time.Minute)
		}})
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
