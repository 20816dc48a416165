package stem_test

import (
	"context"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// A revoked task that waits in a worker's prefetch (claimed, not started)
// is recorded cancelled as soon as the revoke returns: the worker applied
// the revoke before it replied, so the task can no longer start there, and
// the worker does not report it as held.
func TestRevokeOfPrefetchedTaskIsMarkedAtOnce(t *testing.T) {
	e := newEnv(t)
	gate := make(chan struct{})
	defer close(gate)
	started := make(chan string, 4)
	e.reg.MustAdd(stem.Task{Name: "block", Run: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		started <- tc.TaskID()
		<-gate
		return nil, nil
	}})
	e.startWorker(stem.WorkerConfig{ID: "w1", Concurrency: 1, Prefetch: 4, EagerPrefetch: true})
	blocker := e.enqueue("block", nil, stem.EnqueueOptions{})
	if got := <-started; got != blocker {
		t.Fatalf("started %s, want the blocker %s", got, blocker)
	}
	queued := e.enqueue("block", nil, stem.EnqueueOptions{})
	// Wait until the worker holds the queued task in its prefetch.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		n, err := e.broker.Depth(ctx, "default")
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the worker never claimed the queued task")
		}
		time.Sleep(5 * time.Millisecond) // polling the broker: no event to wait on
	}
	res, err := e.controller().RevokeTasks(ctx, stem.Target{Workers: []string{"w1"}, Timeout: 5 * time.Second},
		stem.RevokeOptions{TaskIDs: []string{queued}, Reason: "not needed", RequestedBy: "test"})
	if err != nil || res.MarkErr != nil {
		t.Fatalf("revoke: %v, mark: %v", err, res.MarkErr)
	}
	got, err := e.results.Get(ctx, queued)
	if err != nil || got.State != stemtype.StateCancelled || got.Meta[stemtype.MetaRevokedReason] != "not needed" {
		t.Fatalf("status right after the revoke = %+v (%v), want cancelled with the reason", got, err)
	}
}
