package stem

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// maxGroup is the most Enqueue calls one group commit stores together.
const maxGroup = 1000

// enqueueStores is how many group commits a Client's Enqueue calls keep
// under way at once: more keeps more round trips in flight when many
// goroutines enqueue; fewer makes larger groups.
const enqueueStores = 4

// enqueueOp is one Enqueue call waiting to be stored by a group commit.
type enqueueOp struct {
	env *stemtype.Envelope
	now time.Time
	// wake receives true when the call is to lead the next group, false
	// when a group that held it was stored (err says how that went).
	wake chan bool
	err  error
}

// committer coalesces concurrent Enqueue calls into one store (one
// pipeline, one transaction) in the way of a database's group commit. A
// call that finds fewer than maxStores stores under way stores its task at
// once, so a lone caller waits for nothing; calls that arrive while
// maxStores stores are under way queue, and when one of those ends the
// first of them stores every queued task (up to maxGroup) in one go. No
// goroutine runs in the background: the leader of a group is one of its
// callers. A call returns only once its task is stored, so one
// goroutine's tasks are stored in the order of its calls even with
// several stores under way.
type committer struct {
	store func(ctx context.Context, envs []*stemtype.Envelope, pend []*stemtype.TaskResult) error
	// pending says whether to build the pending states (the client has a
	// result backend).
	pending bool
	// maxStores is how many groups may be stored at once (0 means 1).
	maxStores int
	// queued, when set (by tests), is called after a call joined the
	// queue.
	queued func()
	mu     sync.Mutex
	// storing counts the groups being stored; the queue is empty unless
	// it is at its maximum.
	storing int
	queue   []*enqueueOp
}

// submit stores op's task, alone or in a group, and returns the outcome
// for op. A call whose ctx ends while it waits in the queue leaves it and
// returns ctx's error: its task was not stored. Once its group is being
// stored, the call waits for the outcome: the group is stored under the
// leader's context without its cancellation, so that one caller giving up
// does not fail the others' tasks (the store is bounded by the backend's
// own timeouts).
func (c *committer) submit(ctx context.Context, op *enqueueOp) (stored bool, err error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	c.mu.Lock()
	if c.storing < max(c.maxStores, 1) {
		c.storing++
		c.mu.Unlock()
		c.lead(ctx, op)
		return true, op.err
	}
	c.queue = append(c.queue, op)
	c.mu.Unlock()
	if c.queued != nil {
		c.queued()
	}
	select {
	case lead := <-op.wake:
		if lead {
			c.lead(ctx, op)
		}
		return true, op.err
	case <-ctx.Done():
	}
	c.mu.Lock()
	for i, q := range c.queue {
		if q == op {
			c.queue = append(c.queue[:i], c.queue[i+1:]...)
			c.mu.Unlock()
			return false, ctx.Err()
		}
	}
	c.mu.Unlock()
	// Already taken into a group, or handed the lead: see it through.
	if <-op.wake {
		c.lead(ctx, op)
	}
	return true, op.err
}

// lead stores op together with the queued calls, wakes them with the
// outcome, and hands the lead to the first call queued meanwhile (or
// counts its store as ended).
func (c *committer) lead(ctx context.Context, op *enqueueOp) {
	c.mu.Lock()
	n := min(len(c.queue), maxGroup-1)
	group := make([]*enqueueOp, 0, n+1)
	group = append(group, op)
	group = append(group, c.queue[:n]...)
	c.queue = append(c.queue[:0:0], c.queue[n:]...)
	c.mu.Unlock()

	envs := make([]*stemtype.Envelope, len(group))
	var pend []*stemtype.TaskResult
	if c.pending {
		pend = make([]*stemtype.TaskResult, len(group))
	}
	for i, g := range group {
		envs[i] = g.env
		if c.pending {
			pend[i] = pendingOf(g.env, g.now)
		}
	}
	err := c.store(context.WithoutCancel(ctx), envs, pend)
	for _, g := range group {
		g.err = err
		if g != op {
			g.wake <- false
		}
	}
	if len(group) > 1 {
		// Let the callers just woken run before this store's slot is
		// freed or handed on, so that those that enqueue again at once
		// queue while it is still taken and go out together in the
		// next group, rather than the first of them taking the freed
		// slot for a store of one. A hint to the scheduler, no more
		// (8 producers on Redis: groups of 1.84 tasks instead of 1.63,
		// about 8% more tasks a second; BENCHMARKS.md).
		runtime.Gosched()
	}

	c.mu.Lock()
	if len(c.queue) == 0 {
		c.storing--
		c.mu.Unlock()
		return
	}
	next := c.queue[0]
	c.queue = c.queue[1:]
	c.mu.Unlock()
	next.wake <- true
}

// pendingOf returns the pending state recorded for env before it is
// published.
func pendingOf(env *stemtype.Envelope, now time.Time) *stemtype.TaskResult {
	return &stemtype.TaskResult{ID: env.ID, Task: env.Task, Queue: env.Queue, State: stemtype.StatePending, NotBefore: env.NotBefore, UpdatedAt: now}
}

// errPendingNotRecorded marks a store failure that happened before anything
// was published.
type errPendingNotRecorded struct{ err error }

func (e *errPendingNotRecorded) Error() string { return e.err.Error() }
func (e *errPendingNotRecorded) Unwrap() error { return e.err }

// storeTasks records the pending states of envs (pend, when the client has
// a result backend) and then publishes envs: in one step when the broker
// can write the result backend alongside its messages
// (stemdriver.PendingPublisher), else with Put and then Publish. A failure
// to record the pending states before anything was published is an
// *errPendingNotRecorded.
func (c *Client) storeTasks(ctx context.Context, envs []*stemtype.Envelope, pend []*stemtype.TaskResult) error {
	if c.keys != nil {
		for _, e := range envs {
			c.keys.SignEnvelope(e) // the headers are final: tracing set them
		}
	}
	if c.results != nil {
		if pp, ok := c.broker.(stemdriver.PendingPublisher); ok {
			done, err := pp.PublishWithResults(ctx, c.results, pend, envs)
			if done {
				if err != nil {
					return fmt.Errorf("stem: enqueue: record pending state and publish: %w", err)
				}
				return nil
			}
		}
		// Pending is written before publishing so that a fast worker's
		// "started" can never be overwritten by it.
		if err := c.results.Put(ctx, pend...); err != nil {
			return &errPendingNotRecorded{fmt.Errorf("stem: enqueue: record pending state: %w", err)}
		}
	}
	if err := c.broker.Publish(ctx, envs...); err != nil {
		return fmt.Errorf("stem: enqueue: publish: %w", err)
	}
	return nil
}

// enqueueError returns the *EnqueueError of a storeTasks failure for ids.
func enqueueError(ids []string, err error) *EnqueueError {
	e := &EnqueueError{IDs: ids, Err: err}
	var notRecorded *errPendingNotRecorded
	if errors.As(err, &notRecorded) {
		e.Published, e.Err = make([]bool, len(ids)), notRecorded.err
	}
	return e
}
