package stem_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// brokenResults is the real memory result backend whose Put always fails:
// a result backend this worker cannot write to (a wrong ACL, a full disk).
type brokenResults struct{ stemdriver.ResultBackend }

func (brokenResults) Put(context.Context, ...*stemtype.TaskResult) error {
	return errors.New("injected: result backend refuses writes")
}

// claimOnce is the real memory broker whose claims find nothing once one
// found a task: the worker keeps running, but takes no second task.
type claimOnce struct {
	stemdriver.Broker
	claimed atomic.Bool
}

func (b *claimOnce) Claim(ctx context.Context, req stemdriver.ClaimRequest) ([]stemdriver.Delivery, error) {
	if b.claimed.Load() {
		t := time.NewTimer(req.Wait)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		return nil, nil
	}
	ds, err := b.Broker.Claim(ctx, req)
	if len(ds) > 0 {
		b.claimed.Store(true)
	}
	return ds, err
}

// A running worker that cannot record a task's outcome gives the task up
// after its writer's GiveUpAfter: it stops renewing the lease, the lease
// lapses, and a healthy worker runs the task and records it. Before, the
// worker retried the write and renewed the lease for as long as it ran,
// and the task was never finished.
func TestUnrecordableOutcomeGoesToAnotherWorker(t *testing.T) {
	e := newEnv(t)
	var runs atomic.Int32
	ran := make(chan struct{}, 4)
	stem.Register(e.reg, "job", func(*stem.TaskContext, stem.Args) (any, error) {
		runs.Add(1)
		ran <- struct{}{}
		return "ok", nil
	}, stem.TaskOptions{})
	id := e.enqueue("job", nil, stem.EnqueueOptions{})

	a, err := stem.NewWorker(stem.WorkerConfig{ID: "broken", Namespace: e.ns, Registry: e.reg,
		Broker: &claimOnce{Broker: e.broker}, Results: brokenResults{e.results}, Control: e.control,
		Lease: 200 * time.Millisecond, ClaimWait: 50 * time.Millisecond, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	stem.SetWriterGiveUp(a, 100*time.Millisecond)
	systemtest.RunWorker(t, a)
	<-ran // the broken worker ran the task; its outcome cannot be written

	e.startWorker(stem.WorkerConfig{ID: "healthy", Lease: 200 * time.Millisecond})
	r := e.wait(id)
	if r.State != stemtype.StateSucceeded || r.WorkerID != "healthy" {
		t.Fatalf("got %s by %q, want succeeded by the healthy worker", r.State, r.WorkerID)
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("the task ran %d times, want 2 (once on each worker)", n)
	}
	// The lease lapsed only once the writer gave up: stats say so.
	if st := a.Stats(context.Background()); st.ResultsGivenUp < 1 {
		t.Fatalf("stats of the broken worker: resultsGivenUp %d, want at least 1", st.ResultsGivenUp)
	}
}
