package systemtest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// frozenBroker is a broker whose every call waits while the worker using
// it is frozen (as a process stopped with SIGSTOP, or one whose host
// stalled), then goes through as made: the frozen worker's clock and
// requests resume where they stopped, and whatever changed meanwhile is
// the broker's to report.
type frozenBroker struct {
	stemdriver.Broker
	mu     sync.Mutex
	thawed chan struct{} // nil while not frozen
}

// freeze makes every later call wait until thaw.
func (b *frozenBroker) freeze() {
	b.mu.Lock()
	b.thawed = make(chan struct{})
	b.mu.Unlock()
}

// thaw lets the waiting and later calls through. It is safe to call more
// than once.
func (b *frozenBroker) thaw() {
	b.mu.Lock()
	if b.thawed != nil {
		close(b.thawed)
		b.thawed = nil
	}
	b.mu.Unlock()
}

func (b *frozenBroker) wait(ctx context.Context) error {
	b.mu.Lock()
	ch := b.thawed
	b.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *frozenBroker) Claim(ctx context.Context, req stemdriver.ClaimRequest) ([]stemdriver.Delivery, error) {
	if err := b.wait(ctx); err != nil {
		return nil, err
	}
	return b.Broker.Claim(ctx, req)
}

func (b *frozenBroker) ExtendLease(ctx context.Context, d stemdriver.Delivery, l time.Duration) error {
	if err := b.wait(ctx); err != nil {
		return err
	}
	return b.Broker.ExtendLease(ctx, d, l)
}

func (b *frozenBroker) Ack(ctx context.Context, ds ...stemdriver.Delivery) error {
	if err := b.wait(ctx); err != nil {
		return err
	}
	return b.Broker.Ack(ctx, ds...)
}

func (b *frozenBroker) Retry(ctx context.Context, d stemdriver.Delivery, next *stemtype.Envelope) error {
	if err := b.wait(ctx); err != nil {
		return err
	}
	return b.Broker.Retry(ctx, d, next)
}

func (b *frozenBroker) Release(ctx context.Context, ds ...stemdriver.Delivery) error {
	if err := b.wait(ctx); err != nil {
		return err
	}
	return b.Broker.Release(ctx, ds...)
}

func (b *frozenBroker) DeadLetter(ctx context.Context, d stemdriver.Delivery, reason string) error {
	if err := b.wait(ctx); err != nil {
		return err
	}
	return b.Broker.DeadLetter(ctx, d, reason)
}

// A worker frozen past its lease while it runs a task (stopped, stalled,
// cut off) is not fenced off by presence but by the lease: another worker
// re-claims the task once the lease ends and runs it, and when the frozen
// worker resumes, its next renewal learns that the lease is lost and
// cancels its own run with stem.ErrLeaseLost. So the task runs twice, as
// at-least-once allows, but never twice unnoticed, and the first run's
// late end replaces nothing (issue 13: recovery from a dead worker rests
// on the lease, see stem.DefaultLease).
func testFrozenWorkerLearnsItsTaskWasReclaimed(t *testing.T, h Harness) {
	d := open(t, h)
	firstRunning := make(chan struct{})
	firstCause := make(chan error, 1)
	var mu sync.Mutex
	runs := 0
	stem.Register(d.reg, "work", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		mu.Lock()
		runs++
		n := runs
		mu.Unlock()
		if n > 1 {
			return "done", nil
		}
		close(firstRunning)
		<-tc.Done() // runs until its worker learns it lost the task
		firstCause <- context.Cause(tc)
		return "late", nil
	}, stem.TaskOptions{})
	b := &frozenBroker{Broker: d.roles.Broker}
	t.Cleanup(b.thaw) // before the worker stops, should the case fail
	_, stopFrozen := d.startWorker(stem.WorkerConfig{ID: "frozen", Concurrency: 1, Prefetch: 1, Broker: b,
		Lease: h.Capabilities.ShortLease})
	id := d.enqueue("work", stem.EnqueueOptions{})
	await(t, firstRunning, "the task runs on the first worker")
	b.freeze()
	d.startWorker(stem.WorkerConfig{ID: "alive"})
	res := d.wait(id)
	if res.State != stemtype.StateSucceeded || string(res.Result) != `"done"` || res.WorkerID != "alive" {
		t.Fatalf("got %+v, want the task re-claimed and finished by the live worker", res)
	}
	select {
	case cause := <-firstCause:
		t.Fatalf("the frozen worker's run ended (%v) while the worker was frozen", cause)
	default:
	}
	b.thaw()
	if cause := await(t, firstCause, "the resumed worker cancels its run"); !errors.Is(cause, stem.ErrLeaseLost) {
		t.Fatalf("the resumed worker's run ended with cause %v, want stem.ErrLeaseLost", cause)
	}
	// The late run's outcome goes nowhere: once the resumed worker is done
	// with it (Run returned), the live worker's stays, and nothing is left
	// in the queue.
	stopFrozen()
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("queue depth %d after the frozen worker stopped, want 0", n)
	}
	if r, err := d.roles.Results.Get(context.Background(), id); err != nil || r.State != stemtype.StateSucceeded ||
		string(r.Result) != `"done"` || r.WorkerID != "alive" {
		t.Fatalf("after the frozen worker resumed: %+v %v, want the live worker's outcome", r, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if runs != 2 {
		t.Fatalf("ran %d times, want 2 (once per worker)", runs)
	}
}
