package stem_test

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// A progress percentage that is not a number (0/0, as a handler that
// divides by an empty total reports) is refused like one out of range:
// accepted, it made every later write of its writer shard unencodable,
// so neither the task's outcome nor any other task's of that shard was
// ever recorded or acknowledged.
func TestProgressNaNIsRefusedAndTheTaskEnds(t *testing.T) {
	e := newEnv(t)
	refused := make(chan error, 1)
	stem.Register(e.reg, "empty-batch", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		done, total := 0.0, 0.0
		refused <- tc.Progress(done/total*100, nil)
		return "ok", nil
	}, stem.TaskOptions{})
	e.startWorker(stem.WorkerConfig{})
	id := e.enqueue("empty-batch", nil, stem.EnqueueOptions{})
	if err := <-refused; err == nil {
		t.Error("Progress(NaN) returned no error")
	}
	// A failure detector: the outcome is recorded within milliseconds.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := e.client.Wait(ctx, id)
	if err != nil {
		t.Fatalf("the task's outcome was never recorded: %v", err)
	}
	if r.State != stemtype.StateSucceeded || (r.Progress != nil && math.IsNaN(r.Progress.Percent)) {
		t.Fatalf("got %+v", r)
	}
}
