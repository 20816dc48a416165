package stem

import (
	"context"
	"errors"
	"time"

	"github.com/stem-go/stem/internal/jobs"
	"github.com/stem-go/stem/stemdriver"
)

// renewLeases extends the lease of every held delivery before it expires.
func (w *Worker) renewLeases(ctx context.Context) {
	for {
		due, next := w.jobs.Due(time.Now(), w.cfg.Lease/4)
		for _, j := range due {
			w.extend(ctx, j, 0)
		}
		if !sleepCtx(ctx, max(next, 5*time.Millisecond)) {
			return
		}
	}
}

// extend renews j's lease (its current lease duration when d is 0; see
// jobs.Table.LeaseFor for why a request for d never shortens it). When
// the broker says the lease is lost, the running task's context is
// cancelled with cause ErrLeaseLost; a job settled meanwhile lost nothing
// and extend returns nil.
func (w *Worker) extend(ctx context.Context, j *jobs.Job, d time.Duration) error {
	d = w.jobs.LeaseFor(j, d, time.Now())
	err := w.cfg.Broker.ExtendLease(ctx, j.D, d)
	switch {
	case err == nil:
		w.jobs.Extended(j, time.Now().Add(d))
	case errors.Is(err, stemdriver.ErrLeaseLost):
		held, first := w.jobs.LeaseLost(j, ErrLeaseLost)
		if !held {
			return nil // settled meanwhile: nothing was lost
		}
		if first {
			w.log.Warn("lease lost: another worker may run this task", "task_id", j.TaskID())
		}
	case ctx.Err() == nil:
		w.log.Warn("extend lease failed", "task_id", j.TaskID(), "err", err)
	}
	return err
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
