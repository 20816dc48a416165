package stem_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// A progress report racing the end of its task never lands after the
// final record. Each task's reporter goroutine passes Progress's check
// while the handler still runs and queues its write only once the task's
// outcome went to the result writer (test hooks hold it there), the
// widest form of the race; every task still ends succeeded, and Wait
// returns for each.
func TestProgressRacingReturnNeverReplacesFinalState(t *testing.T) {
	e := newEnv(t)
	const n = 2000
	var (
		mu      sync.Mutex
		checked = map[string]chan struct{}{} // closed once the reporter passed the check
		settled = map[string]chan struct{}{} // closed once the outcome was queued
	)
	ch := func(m map[string]chan struct{}, id string) chan struct{} {
		mu.Lock()
		defer mu.Unlock()
		c, ok := m[id]
		if !ok {
			c = make(chan struct{})
			m[id] = c
		}
		return c
	}
	h := hooks{
		progressChecked: func(id string) {
			close(ch(checked, id))
			<-ch(settled, id)
		},
		settled: func(id string) { close(ch(settled, id)) },
	}
	var reporters sync.WaitGroup
	stem.Register(e.reg, "report-and-return", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		// A reporter goroutine of the task (a ticker, say) reports while
		// the handler returns.
		reporters.Go(func() { _ = tc.Progress(99, nil) })
		<-ch(checked, tc.TaskID())
		return "done", nil
	}, stem.TaskOptions{})
	reqs := make([]stem.EnqueueRequest, n)
	for i := range reqs {
		reqs[i] = stem.EnqueueRequest{Task: "report-and-return"}
	}
	ids, err := e.client.EnqueueBatch(context.Background(), reqs)
	if err != nil {
		t.Fatal(err)
	}
	_, stop := e.startHookedWorker(stem.WorkerConfig{Concurrency: 8}, h)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, id := range ids {
		if _, err := e.client.Wait(ctx, id); err != nil {
			t.Fatalf("Wait: %v", err)
		}
	}
	// Every report has been made; the worker flushes what it queued.
	reporters.Wait()
	stop()
	rs, err := e.results.GetMany(context.Background(), ids...)
	if err != nil {
		t.Fatal(err)
	}
	bad := 0
	for i, r := range rs {
		if r == nil || r.State != stemtype.StateSucceeded {
			if bad++; bad <= 3 {
				t.Errorf("task %s ended %+v", ids[i], r)
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d tasks did not stay succeeded", bad, n)
	}
}
