package stem

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/stem-go/stem/internal/jobs"
	"github.com/stem-go/stem/internal/settle"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// settle hands the outcome of j to the settlement writer, which records
// the result and then acknowledges, retries or dead-letters the delivery.
// A release or a lost lease records no result: it is settled at once,
// outside the writer (settleBare).
func (w *Worker) settle(j *jobs.Job, res *stemtype.TaskResult, op settle.Op, next *stemtype.Envelope, reason string) {
	if res == nil && (op == settle.Release || op == settle.None) {
		w.settleBare(op, j)
		return
	}
	w.jobs.MarkSettled(j)
	w.writer.Queue(settle.Settlement{Delivery: &j.D, Result: res, Op: op, Next: next, Reason: reason})
	w.settledHook(j)
}

func (w *Worker) settledHook(j *jobs.Job) {
	if h := w.hooks.settled; h != nil {
		h(j.TaskID())
	}
}

// bareReleases counts the settleBare calls under way, so that Run can
// wait for them before it returns.
type bareReleases struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to zero
}

func (b *bareReleases) start() {
	b.mu.Lock()
	if b.n++; b.n == 1 {
		b.idle = make(chan struct{})
	}
	b.mu.Unlock()
}

func (b *bareReleases) end() {
	b.mu.Lock()
	if b.n--; b.n == 0 {
		close(b.idle)
	}
	b.mu.Unlock()
}

// under returns how many are under way and a channel closed when none is.
func (b *bareReleases) under() (int, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n, b.idle
}

// settleBare settles jobs whose outcome records no result: with
// settle.Release they go back to the broker in one Release, with
// settle.None (the lease was lost) there is nothing to do. Either way
// they are forgotten. This never waits for the settlement writer: a
// shutdown release must not be held up, nor skipped, because a result
// write queued before it (a progress report, another task's outcome)
// stalls or fails; the task would wait out its whole lease. What cannot
// be released within releaseTimeout is left to its lease.
func (w *Worker) settleBare(op settle.Op, js ...*jobs.Job) {
	if len(js) == 0 {
		return
	}
	w.bare.start()
	defer w.bare.end()
	for _, j := range js {
		w.jobs.MarkSettled(j)
	}
	if op == settle.Release {
		ds := make([]stemdriver.Delivery, len(js))
		for i, j := range js {
			ds[i] = j.D
		}
		ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
		err := w.cfg.Broker.Release(ctx, ds...)
		for attempt := 2; err != nil && !errors.Is(err, stemdriver.ErrLeaseLost) && attempt <= 3; attempt++ {
			w.log.Warn("release tasks failed: retrying", "tasks", len(ds), "err", err)
			if !sleepCtx(ctx, time.Duration(attempt)*25*time.Millisecond) {
				break
			}
			err = w.cfg.Broker.Release(ctx, ds...)
		}
		cancel()
		switch {
		case errors.Is(err, stemdriver.ErrLeaseLost):
			w.log.Warn("release tasks: lease lost, another worker owns the task now", "tasks", len(ds), "err", err)
		case err != nil:
			w.log.Error("release tasks: giving up, leaving them to lease expiry", "tasks", len(ds), "err", err)
		}
	}
	for _, j := range js {
		w.jobs.Forget(&j.D)
		w.settledHook(j)
	}
}

// releaseTimeout bounds the release of tasks at shutdown.
const releaseTimeout = 5 * time.Second

// awaitBare waits for the settleBare calls under way, for at most a
// little more than releaseTimeout, which bounds each of them.
func (w *Worker) awaitBare() {
	n, idle := w.bare.under()
	if n == 0 {
		return
	}
	w.log.Info("waiting for task releases under way", "count", n)
	t := time.NewTimer(releaseTimeout + time.Second)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C:
		w.log.Warn("task releases still under way: leaving them", "count", n)
	}
}

// releaseAll releases every held delivery whose outcome is not decided
// (tasks abandoned at shutdown).
func (w *Worker) releaseAll() {
	ds := w.jobs.Abandon()
	if len(ds) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.cfg.Broker.Release(ctx, ds...); err != nil {
		w.log.Error("release abandoned tasks", "err", err, "count", len(ds))
	}
}
