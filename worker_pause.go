package stem

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/stem-go/stem/internal/jobs"
	"github.com/stem-go/stem/internal/settle"
	"github.com/stem-go/stem/stemtype"
)

// claimQueues returns the worker's queues that are not paused at now, in
// priority order.
func (w *Worker) claimQueues(now time.Time) []string {
	var out []string
	for i, q := range w.cfg.Queues {
		if w.revokes.QueuePaused(q, now) {
			if out == nil {
				out = slices.Clone(w.cfg.Queues[:i])
			}
			continue
		}
		if out != nil {
			out = append(out, q)
		}
	}
	if out == nil {
		return w.cfg.Queues
	}
	return out
}

// pausedQueues returns the worker's queues that are paused at now, sorted.
func (w *Worker) pausedQueues(now time.Time) []string {
	out := []string{}
	for _, q := range w.revokes.PausedQueues(now) {
		if slices.Contains(w.cfg.Queues, q) {
			out = append(out, q)
		}
	}
	return out
}

// wakeFetch tells the fetch loop that the paused queues may have changed.
func (w *Worker) wakeFetch() {
	select {
	case w.pauses <- struct{}{}:
	default:
	}
}

// pauseCommand applies the record of a pause or resume command (typ) and
// reports whether the queue is now paused here.
// The worker announces itself again before it replies, so that `worker
// status` shows the change as soon as the command returns.
func (w *Worker) pauseCommand(ctx context.Context, typ string, req stemtype.QueuePauseRequest, now time.Time) (stemtype.QueuePauseReply, error) {
	r := req.Record
	if err := r.Validate(); err != nil {
		return stemtype.QueuePauseReply{}, fmt.Errorf("bad %s payload: %w", typ, err)
	}
	if r.Kind != stemtype.RevokeKindQueuePause {
		return stemtype.QueuePauseReply{}, fmt.Errorf("bad %s payload: record of kind %q, want %q", typ, r.Kind, stemtype.RevokeKindQueuePause)
	}
	if r.Resumed != (typ == stemtype.CommandResume) {
		return stemtype.QueuePauseReply{}, fmt.Errorf("bad %s payload: record with resumed %v", typ, r.Resumed)
	}
	if r.Namespace == w.cfg.Namespace {
		w.revokes.Apply(now, r)
		w.wakeFetch()
		if err := w.announce(ctx); err != nil && ctx.Err() == nil {
			w.log.Warn("announce presence", "err", err)
		}
		if r.Resumed {
			w.log.Info("queue resumed", "queue", r.Queue, "requested_by", r.RequestedBy)
		} else {
			w.log.Info("queue paused", "queue", r.Queue, "requested_by", r.RequestedBy)
		}
	}
	return stemtype.QueuePauseReply{Queue: r.Queue, Paused: w.revokes.QueuePaused(r.Queue, now),
		Consumes: slices.Contains(w.cfg.Queues, r.Queue), PausedQueues: w.pausedQueues(now)}, nil
}

// releasePaused hands the claimed jobs of queues paused at now back to the
// broker at once, and returns the others. A claim that was under way when
// a pause arrived may bring tasks of that queue: once the worker answered
// the pause, none of them starts here.
func (w *Worker) releasePaused(claimed []*jobs.Job, now time.Time) []*jobs.Job {
	var paused []*jobs.Job
	keep := claimed[:0:0]
	for _, j := range claimed {
		if w.revokes.QueuePaused(j.D.Queue, now) {
			paused = append(paused, j)
		} else {
			keep = append(keep, j)
		}
	}
	if len(paused) == 0 {
		return claimed
	}
	w.log.Info("claimed tasks of a paused queue: released", "tasks", len(paused))
	w.settleBare(settle.Release, paused...)
	return keep
}
