package systemtest

import (
	"context"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// hungResults is a result backend whose Put hangs until its context ends:
// a result backend that stopped answering.
type hungResults struct{ stemdriver.ResultBackend }

func (hungResults) Put(ctx context.Context, _ ...*stemtype.TaskResult) error {
	<-ctx.Done()
	return ctx.Err()
}

// A task's progress reports never block on a result backend that stopped
// answering: a report that cannot be queued is dropped (the outcome
// carries the last one), so the handler keeps running, and keeps meeting
// its checkpoints (a terminate revoke, a time limit, shutdown), rather
// than hanging in Progress until the writer gives up.
func testProgressNeverBlocksOnHungResults(t *testing.T, h Harness) {
	d := open(t, h)
	const reports = 5000 // more than the writer queues
	done := make(chan struct{})
	stem.Register(d.reg, "chatty", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		for i := range reports {
			if err := tc.Progress(float64(i%101), nil); err != nil {
				return nil, err
			}
		}
		close(done)
		return "reported", nil
	}, stem.TaskOptions{})
	d.enqueue("chatty", stem.EnqueueOptions{})
	d.startWorker(stem.WorkerConfig{Results: hungResults{d.roles.Results}, ShutdownTimeout: 100 * time.Millisecond})
	await(t, done, "the handler makes every progress report while the result backend hangs")
}
