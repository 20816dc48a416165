package stem_test

import (
	"context"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/settle"
)

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
		if id := stem.NewTaskID(); settle.ShardOf(id) == 0 {
			reqs = append(reqs, stem.EnqueueRequest{Task: "deaf", Options: stem.EnqueueOptions{ID: id}})
		}
	}
	ours := make(map[string]bool, n)
	for _, r := range reqs {
		ours[r.Options.ID] = true
	}
	settled := make(chan struct{}, n)
	if _, err := e.client.EnqueueBatch(context.Background(), reqs); err != nil {
		t.Fatal(err)
	}
	_, stop := e.startHookedWorker(stem.WorkerConfig{Concurrency: n, Prefetch: 1, ShutdownTimeout: 10 * time.Millisecond},
		hooks{settled: func(id string) {
			if ours[id] {
				settled <- struct{}{}
			}
		}})
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
