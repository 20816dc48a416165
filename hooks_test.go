package stem_test

import (
	"sync"
	"testing"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/systemtest"
)

// hooks are one worker's test seams (stem.SetTestHooks).
type hooks struct {
	progressChecked func(taskID string)
	settled         func(taskID string)
}

// startHookedWorker is startWorker with h installed on the worker before
// it runs: the seams are that worker's own, so parallel tests never see
// each other's.
func (e *env) startHookedWorker(cfg stem.WorkerConfig, h hooks) (*stem.Worker, func()) {
	e.t.Helper()
	w := e.newWorker(cfg)
	stem.SetTestHooks(w, h.progressChecked, h.settled)
	return w, systemtest.RunWorker(e.t, w)
}

// Test seams belong to one worker: two workers running side by side (as
// parallel tests do) each see their own tasks' settlements only.
func TestHooksArePerWorker(t *testing.T) {
	e := newEnv(t)
	stem.Register(e.reg, "noop", func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }, stem.TaskOptions{})
	const n = 40
	type seen struct {
		mu  sync.Mutex
		ids map[string]bool
	}
	record := func(s *seen) func(string) {
		return func(id string) {
			s.mu.Lock()
			s.ids[id] = true
			s.mu.Unlock()
		}
	}
	a, b := &seen{ids: map[string]bool{}}, &seen{ids: map[string]bool{}}
	wa, stopA := e.startHookedWorker(stem.WorkerConfig{ID: "a", Concurrency: 2}, hooks{settled: record(a)})
	wb, stopB := e.startHookedWorker(stem.WorkerConfig{ID: "b", Concurrency: 2}, hooks{settled: record(b)})
	ids := make([]string, n)
	for i := range ids {
		ids[i] = e.enqueue("noop", nil, stem.EnqueueOptions{})
	}
	ranOn := map[string]string{}
	for _, id := range ids {
		ranOn[id] = e.wait(id).WorkerID
	}
	// A hook runs just after its outcome is queued, so maybe after Wait
	// saw the result: once Run returned, every hook call has been made.
	stopA()
	stopB()
	for _, id := range ids {
		a.mu.Lock()
		inA := a.ids[id]
		a.mu.Unlock()
		b.mu.Lock()
		inB := b.ids[id]
		b.mu.Unlock()
		want := ranOn[id]
		if inA != (want == wa.ID()) || inB != (want == wb.ID()) {
			t.Fatalf("task %s ran on %s; seen by a's hook %v, by b's %v", id, want, inA, inB)
		}
	}
}
