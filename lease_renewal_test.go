package stem_test

import (
	"context"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// stuckExtend is the real memory broker whose ExtendLease of one task
// hangs until its context ends (a connection that went silent), and which
// reports every successful renewal of another task on renewed.
type stuckExtend struct {
	stemdriver.Broker
	stuck, watched string
	renewed        chan struct{}
}

func (b *stuckExtend) ExtendLease(ctx context.Context, d stemdriver.Delivery, l time.Duration) error {
	if d.Envelope != nil && d.Envelope.ID == b.stuck {
		<-ctx.Done()
		return ctx.Err()
	}
	err := b.Broker.ExtendLease(ctx, d, l)
	if err == nil && d.Envelope != nil && d.Envelope.ID == b.watched {
		select {
		case b.renewed <- struct{}{}:
		default:
		}
	}
	return err
}

// One lease renewal that hangs does not hold up the others: the worker
// keeps renewing every other task it runs, whose lease would otherwise
// lapse and let another worker run it a second time.
func TestHungRenewalDoesNotStarveOtherLeases(t *testing.T) {
	e := newEnv(t)
	release := make(chan struct{})
	started := make(chan string, 2)
	stem.Register(e.reg, "long", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		started <- tc.TaskID()
		select {
		case <-release:
			return "done", nil
		case <-tc.Done():
			return nil, context.Cause(tc)
		}
	}, stem.TaskOptions{})
	stuck := e.enqueue("long", nil, stem.EnqueueOptions{})
	watched := e.enqueue("long", nil, stem.EnqueueOptions{})
	b := &stuckExtend{Broker: e.broker, stuck: stuck, watched: watched, renewed: make(chan struct{}, 1)}
	e.broker = b
	_, stop := e.startWorker(stem.WorkerConfig{Concurrency: 2, Lease: 200 * time.Millisecond})
	defer stop()
	<-started
	<-started
	deadline := time.After(30 * time.Second) // a failure bound: renewals come every 50ms
	for range 4 {
		select {
		case <-b.renewed:
		case <-deadline:
			t.Fatal("the lease of a running task is no longer renewed while another task's renewal hangs")
		}
	}
	close(release)
	if r := e.wait(watched); r.State != stemtype.StateSucceeded {
		t.Fatalf("task ended %s, want succeeded", r.State)
	}
}
