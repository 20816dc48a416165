package stem

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/stem-go/stem/internal/jobs"
	"github.com/stem-go/stem/stemdriver"
)

// renewLeases extends the lease of every held delivery before it expires.
// Each renewal runs on its own goroutine, bounded by renewTimeout, and a
// job is not renewed again while its last renewal is under way: one call
// that hangs (a connection gone silent, a slow shard) holds up no other
// job's renewal, whose lease would lapse and let another worker run its
// task a second time. Each look waits for its renewals (so a lost lease
// is handled before the next look), but no longer than the interval to
// the next look. It returns once ctx ended and every renewal returned.
func (w *Worker) renewLeases(ctx context.Context) {
	var (
		mu       sync.Mutex
		underWay = make(map[*jobs.Job]bool)
		all      sync.WaitGroup
	)
	defer all.Wait()
	timeout := w.renewTimeout()
	for {
		due, next := w.jobs.Due(time.Now(), w.cfg.Lease/4)
		next = max(next, 5*time.Millisecond)
		var round sync.WaitGroup
		for _, j := range due {
			mu.Lock()
			busy := underWay[j]
			underWay[j] = true
			mu.Unlock()
			if busy {
				continue
			}
			round.Add(1)
			all.Go(func() {
				defer round.Done()
				rctx, cancel := context.WithTimeout(ctx, timeout)
				if err := w.extend(rctx, j, 0); err != nil && ctx.Err() == nil && rctx.Err() != nil {
					w.log.Warn("extend lease timed out", "task_id", j.TaskID(), "timeout", timeout)
				}
				cancel()
				mu.Lock()
				delete(underWay, j)
				mu.Unlock()
			})
		}
		roundDone := make(chan struct{})
		all.Go(func() { round.Wait(); close(roundDone) })
		wait := time.NewTimer(next)
		select {
		case <-roundDone:
		case <-wait.C:
		case <-ctx.Done():
		}
		wait.Stop()
		if !sleepCtx(ctx, next) {
			return
		}
	}
}

// renewTimeout bounds one lease renewal: the worker's lease, at least 5s.
// A renewal that takes longer than a lease is of no use; one that fails
// is tried again at the next look.
func (w *Worker) renewTimeout() time.Duration { return max(w.cfg.Lease, 5*time.Second) }

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
		if obs := w.cfg.Observer; obs != nil {
			obs.LeaseRenewed()
		}
	case errors.Is(err, stemdriver.ErrLeaseLost):
		held, first := w.jobs.LeaseLost(j, ErrLeaseLost)
		if !held {
			return nil // settled meanwhile: nothing was lost
		}
		if first {
			w.log.Warn("lease lost: another worker may run this task", "task_id", j.TaskID())
			if obs := w.cfg.Observer; obs != nil {
				obs.LeaseLost()
			}
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
