package settle

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemtype"
)

// newShard returns one shard over a fresh memory deployment and a claimed
// delivery of task id.
func newShard(t *testing.T, id string, results func(stemdriver.ResultBackend) stemdriver.ResultBackend) (*shard, stemdriver.ResultBackend, *stemdriver.Delivery) {
	t.Helper()
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "batch"}
	broker, res := hub.Broker(opts), hub.Results(opts)
	ctx := context.Background()
	if err := broker.Publish(ctx, &stemtype.Envelope{ID: id, Task: "t", Queue: "q", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	ds, err := broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 1, Lease: time.Minute, Wait: time.Second})
	if err != nil || len(ds) != 1 {
		t.Fatalf("claim: %v %v", ds, err)
	}
	if results != nil {
		res = results(res)
	}
	w := New(Config{Broker: broker, Results: res, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	return w.shards[0], res, &ds[0]
}

// In one batch a later write of a task replaces an earlier one, except a
// final one: the started record of a second copy of the task (a duplicate
// publish, a redelivery) queued after the first copy's outcome never
// replaces it, or the delivery would be acked with no outcome recorded.
func TestBatchNeverSupersedesFinal(t *testing.T) {
	sh, res, d := newShard(t, "dup", nil)
	started := &stemtype.TaskResult{ID: "dup", State: stemtype.StateStarted}
	progress := &stemtype.TaskResult{ID: "dup", State: stemtype.StateStarted, Progress: &stemtype.Progress{Percent: 50}}
	final := &stemtype.TaskResult{ID: "dup", State: stemtype.StateSucceeded, Result: []byte(`"first"`)}
	sh.flush(context.Background(), []Settlement{
		{Result: started},
		{Result: progress},
		{Delivery: d, Result: final, Op: Ack},
		{Result: &stemtype.TaskResult{ID: "dup", State: stemtype.StateStarted}}, // the second copy
	}, false)
	r, err := res.Get(context.Background(), "dup")
	if err != nil || r.State != stemtype.StateSucceeded || string(r.Result) != `"first"` {
		t.Fatalf("stored %+v (%v), want the final outcome", r, err)
	}
}

// hung is a memory result backend whose Put hangs until its context ends.
type hung struct{ stemdriver.ResultBackend }

func (hung) Put(ctx context.Context, _ ...*stemtype.TaskResult) error {
	<-ctx.Done()
	return ctx.Err()
}

// The final flush is bounded by its context: with the backend hung it
// returns once the context ends, and leaves the delivery unacknowledged.
func TestFinalFlushBoundedByContext(t *testing.T) {
	sh, _, d := newShard(t, "hung", func(r stemdriver.ResultBackend) stemdriver.ResultBackend { return hung{r} })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	sh.flush(ctx, []Settlement{{Delivery: d, Result: &stemtype.TaskResult{ID: "hung", State: stemtype.StateSucceeded}, Op: Ack}}, true)
	err := sh.cfg.Broker.ExtendLease(context.Background(), *d, time.Minute)
	if err != nil {
		t.Fatalf("the delivery was settled although its result was never written: %v", err)
	}
}
