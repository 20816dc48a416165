package stem_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// releaseSpy records the task ids of every Release through a real broker.
type releaseSpy struct {
	stemdriver.Broker
	mu       sync.Mutex
	releases [][]string
}

func (b *releaseSpy) Release(ctx context.Context, ds ...stemdriver.Delivery) error {
	var ids []string
	for _, d := range ds {
		if d.Envelope != nil {
			ids = append(ids, d.Envelope.ID)
		}
	}
	b.mu.Lock()
	b.releases = append(b.releases, ids)
	b.mu.Unlock()
	return b.Broker.Release(ctx, ds...)
}

func (b *releaseSpy) snapshot() [][]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.releases)
}

// A worker that prefetches (it has seen short tasks) and claims a batch
// whose first tasks hold both its slots hands the rest back in one
// release, while its slots stay busy, claims none of them again, and an
// idle worker runs them all, the long task among them included, before
// the first worker's slots free up. inspect --reserved shows nothing once
// the buffer is handed back.
func TestStalledBufferHandedBack(t *testing.T) {
	e := newEnv(t)
	gate := make(chan struct{})
	release := sync.OnceFunc(func() { close(gate) })
	started := make(chan string, 16)
	for _, name := range []string{"hold", "long"} {
		stem.Register(e.reg, name, func(tc *stem.TaskContext, _ stem.Args) (any, error) {
			started <- tc.TaskID()
			select {
			case <-gate:
				return nil, nil
			case <-tc.Done():
				return nil, tc.Err()
			}
		}, stem.TaskOptions{})
	}
	stem.Register(e.reg, "short", func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }, stem.TaskOptions{})

	spy := &releaseSpy{Broker: e.broker}
	busy, err := stem.NewWorker(stem.WorkerConfig{ID: "busy", Namespace: e.ns, Registry: e.reg, Broker: spy,
		Results: e.results, Revokes: e.revokes, Control: e.control, Concurrency: 2, Logger: quiet(),
		ClaimWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stem.AssumeShortTasks(busy)
	systemtest.RunWorker(t, busy)
	t.Cleanup(release) // before the worker stops

	reqs := []stem.EnqueueRequest{{Task: "hold"}, {Task: "hold"}}
	for range 7 {
		reqs = append(reqs, stem.EnqueueRequest{Task: "short"})
	}
	reqs = append(reqs, stem.EnqueueRequest{Task: "long"})
	ids, err := e.client.EnqueueBatch(context.Background(), reqs)
	if err != nil {
		t.Fatal(err)
	}
	holds, rest := ids[:2], ids[2:]
	for range 2 {
		if got := <-started; !slices.Contains(holds, got) {
			t.Fatalf("%s started first, want the holds %v", got, holds)
		}
	}
	// The rest comes back to the queue: handed back, as the broker saw.
	waitDepth(t, e, int64(len(rest)))
	got := spy.snapshot()
	if len(got) != 1 || !sameSet(got[0], rest) {
		t.Fatalf("%d release(s), the first %v; want one, of the 8 tasks behind the holds %v", len(got), got[0], rest)
	}
	if r := inspectReserved(t, e, "busy"); len(r) != 0 {
		t.Fatalf("busy still reserves %+v after handing its buffer back", r)
	}

	e.startWorker(stem.WorkerConfig{ID: "idle", Concurrency: 2})
	if got := <-started; got != ids[len(ids)-1] {
		t.Fatalf("%s started, want the long task %s", got, ids[len(ids)-1])
	}
	for _, id := range rest[:len(rest)-1] {
		if r := e.wait(id); r.State != stemtype.StateSucceeded || r.WorkerID != "idle" {
			t.Fatalf("short task %s: %+v, want it run by the idle worker", id, r)
		}
	}
	for _, id := range holds {
		if r, err := e.results.Get(context.Background(), id); err != nil || r.State != stemtype.StateStarted {
			t.Fatalf("hold %s: %+v %v, want it still running on busy", id, r, err)
		}
	}
	if got := spy.snapshot(); len(got) != 1 {
		t.Fatalf("busy released %d times, want once: it re-claimed what it handed back", len(got))
	}
	release()
	for _, id := range ids {
		if r := e.wait(id); r.State != stemtype.StateSucceeded || r.Attempt != 0 {
			t.Fatalf("task %s: %+v", id, r)
		}
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// inspectReserved returns worker's reserved tasks, as inspect --reserved
// reports them.
func inspectReserved(t *testing.T, e *env, worker string) []stemtype.ReservedTask {
	t.Helper()
	r, err := e.controller().Inspect(context.Background(), stem.Target{Workers: []string{worker}, Timeout: 10 * time.Second},
		stemtype.InspectRequest{IncludeReserved: true})
	if err != nil {
		t.Fatal(err)
	}
	reps := stem.Decode[stemtype.InspectReply](r)
	if len(reps) != 1 || reps[0].Err != nil || reps[0].Payload.Reserved == nil {
		t.Fatalf("inspect of %s: %+v, want one reply with a reserved list", worker, reps)
	}
	return reps[0].Payload.Reserved
}

// waitDepth polls the default queue until it holds n tasks (a state no
// event announces); the deadline is a failure bound.
func waitDepth(t *testing.T, e *env, n int64) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		got, err := e.broker.Depth(context.Background(), stemtype.DefaultQueue)
		if err == nil && got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue depth %d (%v), want %d", got, err, n)
		}
	}
}
