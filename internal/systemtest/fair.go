package systemtest

import (
	"fmt"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// W workers of concurrency C and W×C long tasks enqueued one at a time:
// each starts while every other still runs. No task waits in one worker's
// prefetch buffer while another worker has a free slot (issue 16: with a
// prefetch of four times the concurrency, the third task could sit behind
// a busy worker while the second worker idled).
func testFairLongTasksSpread(t *testing.T, h Harness) {
	d := open(t, h)
	const workers, concurrency = 3, 2
	started := make(chan string, workers*concurrency)
	release := gatedTask(d, "long", started)
	for i := range workers {
		d.startWorker(stem.WorkerConfig{ID: fmt.Sprintf("w%d", i+1), Concurrency: concurrency})
	}
	t.Cleanup(release)
	var ids []string
	for i := range workers * concurrency {
		id := d.enqueue("long", stem.EnqueueOptions{})
		ids = append(ids, id)
		// None has finished: the gate is closed. A task stranded in a busy
		// worker's buffer never starts, and this wait fails at its bound.
		waitStarted(t, started, id, fmt.Sprintf("long task %d of %d, while the %d before it run", i+1, workers*concurrency, i))
	}
	release()
	perWorker := map[string]int{}
	for _, id := range ids {
		res := d.wait(id)
		if res.State != stemtype.StateSucceeded || res.Attempt != 0 {
			t.Fatalf("task %s: %+v", id, res)
		}
		perWorker[res.WorkerID]++
	}
	for i := range workers {
		if w := fmt.Sprintf("w%d", i+1); perWorker[w] != concurrency {
			t.Fatalf("tasks per worker %v, want %d on each of %d workers", perWorker, concurrency, workers)
		}
	}
}

// A long task enqueued right after a burst of short ones, while the worker
// that would claim them has every slot busy, starts on an idle worker
// instead of waiting behind that worker's slots, and so does the burst.
// The busy worker first runs short tasks, so that it prefetches: with
// every slot taken it claims only tasks already ready (none, when it
// claims right after its slots filled, as here), and it hands back what it
// holds once its slots stay busy (the root package's
// TestStalledBufferHandedBack drives that path deterministically). Before
// issue 16 it claimed the burst into its buffer, and the burst waited for
// the busy worker's slots.
func testFairLongTaskAfterBurst(t *testing.T, h Harness) {
	d := open(t, h)
	const burst = 8
	shortDone := make(chan string, 4*burst)
	stem.Register(d.reg, "short", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		shortDone <- tc.TaskID()
		return nil, nil
	}, stem.TaskOptions{})
	holdStarted := make(chan string, 2)
	releaseHolds := gatedTask(d, "hold", holdStarted)
	longStarted := make(chan string, 1)
	releaseLong := gatedTask(d, "long", longStarted)

	d.startWorker(stem.WorkerConfig{ID: "busy", Concurrency: 2})
	t.Cleanup(releaseHolds)
	t.Cleanup(releaseLong)
	// Warm up: short tasks, one batch.
	warm := make([]stem.EnqueueRequest, 3*burst)
	for i := range warm {
		warm[i] = stem.EnqueueRequest{Task: "short"}
	}
	warmIDs, err := d.client.EnqueueBatch(t.Context(), warm)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range warmIDs {
		if r := d.wait(id); r.State != stemtype.StateSucceeded || r.WorkerID != "busy" {
			t.Fatalf("warm-up task %s: %+v", id, r)
		}
	}
	for range warmIDs {
		<-shortDone
	}
	// Both slots busy until the end of the case.
	holds := []string{d.enqueue("hold", stem.EnqueueOptions{}), d.enqueue("hold", stem.EnqueueOptions{})}
	waitStarted(t, holdStarted, "", "a hold task")
	waitStarted(t, holdStarted, "", "the other hold task")
	// The burst, then the long task, then an idle worker.
	items := make([]stem.EnqueueRequest, burst)
	for i := range items {
		items[i] = stem.EnqueueRequest{Task: "short"}
	}
	burstIDs, err := d.client.EnqueueBatch(t.Context(), items)
	if err != nil {
		t.Fatal(err)
	}
	long := d.enqueue("long", stem.EnqueueOptions{})
	d.startWorker(stem.WorkerConfig{ID: "idle", Concurrency: 2})
	t.Cleanup(releaseHolds)
	t.Cleanup(releaseLong)

	waitStarted(t, longStarted, long, "the long task, while the busy worker's slots stay busy")
	releaseLong()
	if r := d.wait(long); r.State != stemtype.StateSucceeded || r.WorkerID != "idle" {
		t.Fatalf("long task: %+v, want it succeeded on the idle worker", r)
	}
	for _, id := range burstIDs {
		if r := d.wait(id); r.State != stemtype.StateSucceeded || r.WorkerID != "idle" {
			t.Fatalf("burst task %s: %+v, want it succeeded on the idle worker", id, r)
		}
	}
	// Only now may the busy worker's slots free up. (Not final is all the
	// store can say: a task's started record is written once it has run
	// for a while, and this burst may have taken less.)
	for _, id := range holds {
		if r, err := d.roles.Results.Get(t.Context(), id); err != nil || r.State.Final() {
			t.Fatalf("hold task %s: %+v %v, want it still running", id, r, err)
		}
	}
	releaseHolds()
	for _, id := range holds {
		if r := d.wait(id); r.State != stemtype.StateSucceeded || r.WorkerID != "busy" {
			t.Fatalf("hold task %s: %+v", id, r)
		}
	}
}

// waitStarted waits until a task reports on started, and fails unless it
// is id (any task for ""); the bound is a failure, never a
// synchronisation.
func waitStarted(t *testing.T, started <-chan string, id, what string) {
	t.Helper()
	timer := time.NewTimer(waitBound)
	defer timer.Stop()
	select {
	case got := <-started:
		if id != "" && got != id {
			t.Fatalf("%s: %s started, want %s", what, got, id)
		}
	case <-timer.C:
		t.Fatalf("%s: task %s never started", what, id)
	}
}
