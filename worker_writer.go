package stem

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// settlement is one delivery's outcome, or (job nil) a bare result write
// such as a progress update.
type settlement struct {
	job *job
	// of is the job a bare progress write reports on: the write is
	// dropped once that job is settled, whatever the order it was queued
	// in, so it can never follow (and replace) the job's outcome.
	of     *job
	res    *stemtype.TaskResult
	op     settleOp
	next   *stemtype.Envelope
	reason string
}

// resultWriter batches result writes and broker acknowledgements: a task's
// result is always written before its delivery is acknowledged, so a crash
// in between re-runs the task rather than losing its outcome. Batching turns
// the per-task round trips of a busy worker into a few per batch.
//
// Writes are sharded by task id over a few independent writers, so that
// encoding and round trips of one batch overlap with the next, while the
// writes of any one task (started, progress, final) stay in order.
type resultWriter struct {
	shards []*writerShard
}

const writerShards = 4

func newResultWriter(w *Worker) *resultWriter {
	rw := &resultWriter{shards: make([]*writerShard, writerShards)}
	for i := range rw.shards {
		rw.shards[i] = newWriterShard(w)
	}
	return rw
}

func (rw *resultWriter) shard(id string) *writerShard {
	h := uint32(2166136261) // FNV-1a
	for i := 0; i < len(id); i++ {
		h = (h ^ uint32(id[i])) * 16777619
	}
	return rw.shards[h%writerShards]
}

// put queues a result write with no broker action.
func (rw *resultWriter) put(r *stemtype.TaskResult) {
	if r == nil {
		return
	}
	rw.shard(r.ID).put(r)
}

// progress queues a progress write of the running job j, dropped by the
// writer once j is settled.
func (rw *resultWriter) progress(j *job, r *stemtype.TaskResult) {
	sh := rw.shard(r.ID)
	if sh.w.cfg.Results == nil {
		return
	}
	sh.settle(settlement{res: r, of: j})
}

// settle queues a delivery's outcome.
func (rw *resultWriter) settle(s settlement) {
	id := ""
	switch {
	case s.job != nil && s.job.env != nil:
		id = s.job.env.ID
	case s.res != nil:
		id = s.res.ID
	}
	rw.shard(id).settle(s)
}

// run runs every shard until close.
func (rw *resultWriter) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, sh := range rw.shards {
		wg.Go(func() { sh.run(ctx) })
	}
	wg.Wait()
}

// close flushes every shard and stops run; ctx bounds the final flush.
func (rw *resultWriter) close(ctx context.Context) {
	for _, sh := range rw.shards {
		sh.finalCtx = ctx
	}
	for _, sh := range rw.shards {
		sh.close()
	}
}

// writerShard is one of the resultWriter's independent writers.
type writerShard struct {
	// finalCtx bounds the flushes after close; set before closing is
	// closed, read after.
	finalCtx context.Context

	w       *Worker
	in      chan settlement
	closing chan struct{}
	done    chan struct{}
	once    sync.Once
}

const (
	writerBatch    = 256
	writerInterval = time.Millisecond
)

func newWriterShard(w *Worker) *writerShard {
	return &writerShard{w: w, in: make(chan settlement, 4*writerBatch), closing: make(chan struct{}), done: make(chan struct{})}
}

// put queues a result write with no broker action.
func (rw *writerShard) put(r *stemtype.TaskResult) {
	if rw.w.cfg.Results == nil {
		return
	}
	rw.settle(settlement{res: r})
}

// settle queues s. Once the shard stopped (Run returned and released
// what its runners still held) s is dropped instead: a handler that
// ignored its cancellation and returns after that must not block its
// runner for ever on a queue no one reads. Its task was released, or is
// left to its lease, and runs again elsewhere.
func (rw *writerShard) settle(s settlement) {
	select {
	case rw.in <- s:
	case <-rw.done:
		if s.job != nil {
			rw.w.forget(s.job)
		}
	}
}

func (rw *writerShard) isClosing() bool {
	select {
	case <-rw.closing:
		return true
	default:
		return false
	}
}

// close flushes what is queued and stops run. Callers must not put after.
func (rw *writerShard) close() {
	rw.once.Do(func() { close(rw.closing) })
	<-rw.done
}

// run flushes batches until close; ctx only bounds the retries of a
// failing backend during shutdown.
func (rw *writerShard) run(ctx context.Context) {
	defer close(rw.done)
	batch := make([]settlement, 0, writerBatch)
	for {
		select {
		case s := <-rw.in:
			batch = append(batch[:0], s)
		case <-rw.closing:
			fctx := rw.finalCtx
			if fctx == nil {
				fctx = ctx
			}
			for {
				select {
				case s := <-rw.in:
					batch = append(batch[:0], s)
					rw.collect(&batch)
					rw.flush(fctx, batch, true)
				default:
					return
				}
			}
		}
		rw.collect(&batch)
		rw.flush(ctx, batch, false)
	}
}

// collect adds whatever arrives within writerInterval, up to writerBatch.
func (rw *writerShard) collect(batch *[]settlement) {
	t := time.NewTimer(writerInterval)
	defer t.Stop()
	for len(*batch) < writerBatch {
		select {
		case s := <-rw.in:
			*batch = append(*batch, s)
		case <-t.C:
			return
		}
	}
}

func (rw *writerShard) flush(ctx context.Context, batch []settlement, final bool) {
	w := rw.w
	if w.cfg.Results != nil {
		results := make([]*stemtype.TaskResult, 0, len(batch))
		last := make(map[string]int, len(batch))
		for _, s := range batch {
			if s.res == nil || (s.of != nil && s.of.settled.Load()) {
				continue
			}
			// Later writes of one task supersede earlier ones in the
			// batch, except a final one: as in the backend, no write
			// replaces it (two copies of a task, a duplicate publish or
			// a redelivery, may share a batch).
			if i, ok := last[s.res.ID]; ok {
				if !results[i].State.Final() {
					results[i] = s.res
				}
				continue
			}
			last[s.res.ID] = len(results)
			results = append(results, s.res)
		}
		if len(results) > 0 && !rw.retry(ctx, final, "write results", func(ctx context.Context) error {
			return w.cfg.Results.Put(ctx, results...)
		}) {
			// Never acknowledge an outcome that was not recorded: those
			// deliveries are left to their leases, which lapse once they
			// are forgotten, and the tasks run again elsewhere. A
			// delivery whose settlement records no result (a task found
			// finished already, say) goes ahead: the failed write was
			// not its own.
			unrecorded := 0
			kept := batch[:0:0]
			for _, s := range batch {
				switch {
				case s.job == nil:
				case s.res != nil:
					unrecorded++
					w.forget(s.job)
				default:
					kept = append(kept, s)
				}
			}
			w.log.Error("results not written: leaving their tasks to lease expiry", "results", len(results), "tasks", unrecorded)
			batch = kept
		}
	}
	var acks, releases []stemdriver.Delivery
	for _, s := range batch {
		if s.job == nil {
			continue
		}
		d := s.job.d
		switch s.op {
		case settleAck:
			acks = append(acks, d)
		case settleRelease:
			releases = append(releases, d)
		case settleRetry:
			rw.retry(ctx, final, "retry task", func(ctx context.Context) error {
				return w.cfg.Broker.Retry(ctx, d, s.next)
			})
		case settleDeadLetter:
			rw.retry(ctx, final, "dead-letter message", func(ctx context.Context) error {
				return w.cfg.Broker.DeadLetter(ctx, d, s.reason)
			})
		}
	}
	if len(acks) > 0 {
		rw.retry(ctx, final, "ack tasks", func(ctx context.Context) error { return w.cfg.Broker.Ack(ctx, acks...) })
	}
	if len(releases) > 0 {
		rw.retry(ctx, final, "release tasks", func(ctx context.Context) error { return w.cfg.Broker.Release(ctx, releases...) })
	}
	for _, s := range batch {
		if s.job != nil {
			w.forget(s.job)
		}
	}
}

// retry runs op until it succeeds, the lease is gone (another worker owns
// the task then), or ctx ends; during the final flush it tries a few times
// only. The held delivery keeps its lease renewed meanwhile. It reports
// whether op succeeded (a lost lease counts: nothing is left to do).
func (rw *writerShard) retry(ctx context.Context, final bool, what string, op func(context.Context) error) bool {
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := op(octx)
		cancel()
		if err == nil {
			return true
		}
		if errors.Is(err, stemdriver.ErrLeaseLost) {
			rw.w.log.Warn(what+": lease lost, another worker owns the task now", "err", err)
			return true
		}
		if ctx.Err() != nil || ((final || rw.isClosing()) && attempt >= 3) {
			rw.w.log.Error(what+": giving up", "err", err)
			return false
		}
		rw.w.log.Error(what+" failed: retrying", "err", err, "retry_in", backoff)
		if !sleepCtx(ctx, backoff) {
			return false
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}
