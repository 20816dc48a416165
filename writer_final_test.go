package stem_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// gatedResults holds the first Put until gate is closed and says, on
// entered, when it holds it: the result writer is busy with one batch
// while the next one fills up.
type gatedResults struct {
	stemdriver.ResultBackend
	once    sync.Once
	entered chan struct{}
	gate    chan struct{}
}

func (r *gatedResults) Put(ctx context.Context, rs ...*stemtype.TaskResult) error {
	first := false
	r.once.Do(func() { first = true })
	if first {
		close(r.entered)
		select {
		case <-r.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return r.ResultBackend.Put(ctx, rs...)
}

// Two copies of one task on one worker (a duplicate publish, as a retried
// EnqueueBatch makes, or a redelivery): the first copy's outcome is final
// and the second copy's started record, queued right after it, reaches
// the result writer in the same batch. The first final state stays: the
// writer never lets a later write of the batch replace a final one (it
// would not reach the backend, whose final-state rule could not keep it,
// and the first copy would be acknowledged with no outcome recorded).
func TestDuplicateCopyInSameBatchNeverReplacesFinalState(t *testing.T) {
	e := newEnv(t)
	res := &gatedResults{ResultBackend: e.results, entered: make(chan struct{}), gate: make(chan struct{})}
	secondRuns := make(chan struct{})
	var runs atomic.Int32
	stem.Register(e.reg, "twice", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		if runs.Add(1) == 1 {
			// The writer holds the batch of this copy's started record.
			<-res.entered
			return "first", nil
		}
		close(secondRuns)
		return nil, stem.NoRetry(errors.New("second copy: already done"))
	}, stem.TaskOptions{})
	ctx := context.Background()
	id := e.enqueue("twice", nil, stem.EnqueueOptions{})
	env := &stemtype.Envelope{ID: id, Task: "twice", Queue: "default", CreatedAt: time.Now().UTC()}
	if err := e.broker.Publish(ctx, env); err != nil { // the duplicate
		t.Fatal(err)
	}
	e.results = res
	_, stop := e.startWorker(stem.WorkerConfig{Concurrency: 1})
	<-secondRuns
	// The first copy's outcome and the second copy's started record are
	// both queued behind the held batch now.
	close(res.gate)
	r := e.wait(id)
	stop()
	if r.State != stemtype.StateSucceeded || string(r.Result) != `"first"` {
		t.Fatalf("the first copy's final state was replaced: %s %s %+v", r.State, r.Result, r.Error)
	}
}

// writerShardOf is the result writer's shard of a task id (FNV-1a over
// four shards, as in worker_writer.go).
func writerShardOf(id string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h = (h ^ uint32(id[i])) * 16777619
	}
	return h % 4
}

// Handlers that ignore cancellation outlive Run, which releases their
// tasks and closes the result writer. When they return at last, their
// outcomes are dropped (the tasks were released) and their runners end:
// however many there are, none blocks for ever on the closed writer's
// full queue. More of them than the queue holds report to one shard here.
func TestRunnersOutlivingRunNeverBlockOnClosedWriter(t *testing.T) {
	e := newEnv(t)
	const n = 1100 // above the 1,024 settlements one writer shard queues
	running := make(chan struct{}, n)
	release := make(chan struct{})
	stem.Register(e.reg, "deaf", func(*stem.TaskContext, stem.Args) (any, error) {
		running <- struct{}{}
		<-release // ignores its context
		return "late", nil
	}, stem.TaskOptions{})
	reqs := make([]stem.EnqueueRequest, 0, n)
	for len(reqs) < n {
		if id := stem.NewTaskID(); writerShardOf(id) == 0 {
			reqs = append(reqs, stem.EnqueueRequest{Task: "deaf", Options: stem.EnqueueOptions{ID: id}})
		}
	}
	ours := make(map[string]bool, n)
	for _, r := range reqs {
		ours[r.Options.ID] = true
	}
	settled := make(chan struct{}, n)
	restore := stem.SetTestHooks(nil, func(id string) {
		if ours[id] {
			settled <- struct{}{}
		}
	})
	defer restore()
	if _, err := e.client.EnqueueBatch(context.Background(), reqs); err != nil {
		t.Fatal(err)
	}
	_, stop := e.startWorker(stem.WorkerConfig{Concurrency: n, Prefetch: 1, ShutdownTimeout: 10 * time.Millisecond})
	for range n {
		<-running
	}
	stop() // Run returns with every handler still running
	close(release)
	deadline := time.After(30 * time.Second) // a failure detector: the settlements take milliseconds
	for i := range n {
		select {
		case <-settled:
		case <-deadline:
			t.Fatalf("%d of %d runners never got past settling their late outcome: blocked on the closed writer", n-i, n)
		}
	}
}
