package systemtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// The fault matrix's panic row (docs/reliability.md): a handler that
// panics 10,000 times leaves the worker alive and its goroutines back at
// their baseline; every panic is a recorded failure, and retries follow
// the task's options.

// stormRetry retries at once: the row is about panics, not backoff.
type stormRetry struct{}

func (stormRetry) NextRetry(int) time.Duration { return time.Millisecond }

// caseLabel is the pprof label under which a case runs its worker: every
// goroutine the worker starts inherits it, so the case counts the
// worker's goroutines alone among those of the cases running beside it.
const caseLabel = "stem_systemtest_case"

// labelledGoroutines counts the process's goroutines carrying caseLabel
// with value v.
func labelledGoroutines(t *testing.T, v string) int {
	t.Helper()
	var buf bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
		t.Fatalf("goroutine profile: %v", err)
	}
	// In the debug=1 format each group of identical goroutines starts
	// with "N @ pc pc ..." and, when they carry labels, the next line is
	// "# labels: {...}".
	want := fmt.Sprintf("%q:%q", caseLabel, v)
	n, group := 0, 0
	sc := bufio.NewScanner(&buf)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if count, _, ok := strings.Cut(line, " @ "); ok {
			group, _ = strconv.Atoi(count)
			continue
		}
		if strings.HasPrefix(line, "# labels: ") && strings.Contains(line, want) {
			n += group
			group = 0
		}
	}
	return n
}

func testPanicStormLeavesWorkerWhole(t *testing.T, h Harness) {
	d := open(t, h)
	const tasks, retries = 5000, 1 // each task panics twice: 10,000 panics
	var panics atomic.Int64
	stem.Register(d.reg, "storm", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		panics.Add(1)
		panic("storm: " + tc.TaskID())
	}, stem.TaskOptions{MaxRetries: retries, RetryPolicy: stormRetry{}})
	stem.Register(d.reg, "echo", func(_ *stem.TaskContext, a stem.Args) (any, error) { return a, nil }, stem.TaskOptions{})

	pprof.Do(context.Background(), pprof.Labels(caseLabel, d.ns), func(context.Context) {
		d.startWorker(stem.WorkerConfig{Concurrency: 8})
	})
	// The baseline: a worker warmed by some work (pools filled, every
	// queue seen), then idle.
	for range 20 {
		if r := d.wait(d.enqueueWith("echo", map[string]int{"n": 1}, stem.EnqueueOptions{})); r.State != stemtype.StateSucceeded {
			t.Fatalf("warm-up: %+v", r)
		}
	}
	d.waitNotRunning()
	baseline := labelledGoroutines(t, d.ns)
	if baseline == 0 {
		t.Fatal("no goroutine carries the case's label: the count would prove nothing")
	}

	ids := make([]string, 0, tasks)
	ctx := context.Background()
	for len(ids) < tasks {
		reqs := make([]stem.EnqueueRequest, min(500, tasks-len(ids)))
		for i := range reqs {
			reqs[i] = stem.EnqueueRequest{Task: "storm"}
		}
		got, err := d.client.EnqueueBatch(ctx, reqs)
		if err != nil {
			t.Fatalf("enqueue: %v", err)
		}
		ids = append(ids, got...)
	}
	// Wait on the panics themselves: a retried task goes to the back of
	// the queue, so the first task ends near the last. The bound is on
	// progress, not on the whole storm, whose length depends on the
	// backend and the machine's load.
	last, lastAt := int64(-1), time.Now()
	for n := panics.Load(); n < tasks*(retries+1); n = panics.Load() {
		if n != last {
			last, lastAt = n, time.Now()
		} else if time.Since(lastAt) > waitBound {
			t.Fatalf("the storm stalled at %d of %d panics for %s", n, tasks*(retries+1), waitBound)
		}
		time.Sleep(10 * time.Millisecond) // polling a counter: no event to wait on
	}
	for i, id := range ids {
		r := d.wait(id)
		if r.State != stemtype.StateFailed || r.Attempt != retries || r.Error == nil || r.Error.Kind != "panic" ||
			!strings.Contains(r.Error.Message, "storm: "+id) {
			t.Fatalf("task %d of %d: %+v (error %+v), want failed after %d retries, kind panic, naming the task",
				i, tasks, r, r.Error, retries)
		}
	}
	// Delivery is at least once: on a loaded machine a lease can run out
	// and a run be repeated, so the count may exceed the storm, never
	// fall short of it (each task's result above says it ran every
	// attempt).
	if n := panics.Load(); n < tasks*(retries+1) {
		t.Errorf("handler panicked %d times, want at least %d", n, tasks*(retries+1))
	}

	// Alive: it answers a ping and runs the next task.
	r, err := d.ctl.Ping(ctx, stem.Target{Timeout: waitBound}) // returns at its reply
	if err != nil || len(r.Replies) != 1 {
		t.Fatalf("ping after the storm: %v, %+v", err, r)
	}
	if res := d.wait(d.enqueueWith("echo", map[string]int{"n": 2}, stem.EnqueueOptions{})); res.State != stemtype.StateSucceeded {
		t.Fatalf("after the storm: %+v", res)
	}
	// Whole: its goroutines come back to the baseline (some end a moment
	// after their task's outcome is written; the deadline is a failure
	// bound, not a figure).
	d.waitNotRunning()
	goroutines := 0
	d.waitFor(fmt.Sprintf("the worker's goroutines back at their baseline of %d", baseline), func(context.Context) bool {
		goroutines = labelledGoroutines(t, d.ns)
		return goroutines <= baseline
	})
	t.Logf("%d panics; worker goroutines %d before, %d after", panics.Load(), baseline, goroutines)
}
