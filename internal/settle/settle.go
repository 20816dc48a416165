// Package settle is the worker's settlement writer: it records task
// results and then acknowledges, retries, releases or dead-letters their
// deliveries, in batches.
//
// A task's result is always written before its delivery is acknowledged,
// so a crash in between re-runs the task rather than losing its outcome.
// Batching turns the per-task round trips of a busy worker into a few per
// batch. Writes are sharded by task id over a few independent shards, so
// that encoding and round trips of one batch overlap with the next, while
// the writes of any one task (started, progress, final) stay in order.
//
// The writer knows nothing of the worker: it takes a broker, a result
// backend, a logger and a callback (Config.Done) that says when it is done
// with a delivery.
package settle

import (
	"container/heap"
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// Op is what becomes of a settled delivery once its result is written.
type Op int

const (
	// None leaves the delivery alone (its lease was lost: another worker
	// holds the task).
	None Op = iota
	// Ack acknowledges the delivery: the task is done.
	Ack
	// Retry replaces the delivery with Settlement.Next (Broker.Retry).
	Retry
	// Release hands the delivery back to the broker, claimable at once.
	Release
	// DeadLetter moves the delivery to the dead letters with
	// Settlement.Reason.
	DeadLetter
)

// Settlement is one delivery's outcome, or (Delivery nil) a bare result
// write such as a task's started record or a progress update.
type Settlement struct {
	// Delivery is the claimed delivery to settle; nil for a bare result
	// write. The writer hands this same pointer to Config.Done.
	Delivery *stemdriver.Delivery
	// Result is written before the delivery is settled; nil for none.
	Result *stemtype.TaskResult
	// Op is what becomes of Delivery once Result is written.
	Op Op
	// Next is the envelope of the next attempt, for Retry.
	Next *stemtype.Envelope
	// Reason is why the message is dead-lettered, for DeadLetter.
	Reason string
	// Superseded, when set, drops the bare write of Result as soon as it
	// reads true, whatever the order the write was queued in: a progress
	// write of a task whose outcome was decided could otherwise follow
	// (and replace) that outcome.
	Superseded *atomic.Bool
	// Defer, for a bare write, holds it back for this long, after which
	// it is written as if just queued; any later settlement of its task
	// that comes first (its outcome, a progress report, another deferred
	// write) replaces it, and it is never written. A task's started record
	// is deferred so: the outcome of a short task carries everything it
	// says, and the task then costs one result write instead of two. Close
	// writes the deferred writes still held (Superseded permitting).
	Defer time.Duration
}

// id is the task id that picks s's shard.
func (s *Settlement) id() string {
	switch {
	case s.Delivery != nil && s.Delivery.Envelope != nil:
		return s.Delivery.Envelope.ID
	case s.Result != nil:
		return s.Result.ID
	}
	return ""
}

// Config is what a Writer writes to.
type Config struct {
	// Broker settles the deliveries. Required.
	Broker stemdriver.Broker
	// Results records the results; optional: without it, results are
	// not written and bare writes are dropped.
	Results stemdriver.ResultBackend
	// Logger defaults to slog.Default.
	Logger *slog.Logger
	// Done, when set, is called once for each settlement with a delivery
	// when the writer is done with it: the delivery was settled, or left
	// to its lease because its result could not be written, or dropped
	// because the writer had closed. It receives Settlement.Delivery.
	Done func(d *stemdriver.Delivery)
	// GiveUpAfter bounds how long a running writer retries a failing
	// result write or broker settlement of one batch before it gives up
	// on it: the batch's deliveries are then left to their leases (Done
	// is called, the worker stops renewing them, and another claim runs
	// or acknowledges the task), logged as errors and counted (GaveUp).
	// Until an operation of that kind succeeds again, later batches try
	// it once only, so that a backend that stays down costs each batch
	// one round trip rather than GiveUpAfter. Default:
	// DefaultGiveUpAfter.
	GiveUpAfter time.Duration
}

// DefaultGiveUpAfter is Config.GiveUpAfter's default.
const DefaultGiveUpAfter = time.Minute

// Shards is how many independent shards a Writer has.
const Shards = 4

const (
	batchMax      = 256
	batchInterval = time.Millisecond
)

// Writer batches result writes and broker settlements. Build one with
// New, call Run once, queue settlements with Queue, and stop it with
// Close.
type Writer struct {
	cfg    Config
	acker  stemdriver.ResultAcker // set when the broker acknowledges with the results (PutAck)
	shards [Shards]*shard
	gaveUp atomic.Int64
	// failing holds the operations (shard.retry's what) a shard gave up
	// on and none did since: the backend is shared by every shard.
	failing sync.Map
}

// New returns a writer over cfg.
func New(cfg Config) *Writer {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.GiveUpAfter <= 0 {
		cfg.GiveUpAfter = DefaultGiveUpAfter
	}
	w := &Writer{cfg: cfg}
	if ra, ok := cfg.Broker.(stemdriver.ResultAcker); ok && cfg.Results != nil && ra.AcksWith(cfg.Results) {
		w.acker = ra
	}
	for i := range w.shards {
		w.shards[i] = &shard{cfg: &w.cfg, acker: w.acker, gaveUp: &w.gaveUp, failing: &w.failing,
			in:      make(chan Settlement, 4*batchMax),
			closing: make(chan struct{}), done: make(chan struct{})}
	}
	return w
}

// GaveUp returns how many settlements with a delivery the writer gave up
// on since New: their results or broker settlements failed until it
// stopped trying, and their deliveries were left to their leases.
func (w *Writer) GaveUp() int64 { return w.gaveUp.Load() }

// ShardOf returns the index of the shard that writes task id's results
// (FNV-1a of the id).
func ShardOf(id string) int {
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h = (h ^ uint32(id[i])) * 16777619
	}
	return int(h % Shards)
}

// Queue queues s on its task's shard; a bare write with no result backend
// to write to is dropped. Once Close has returned, s is dropped instead
// (and Done called): a handler that ignored its cancellation and returns
// after that must not block for ever on a queue no one reads. Its task
// was released, or is left to its lease, and runs again elsewhere.
func (w *Writer) Queue(s Settlement) {
	if s.Delivery == nil && (s.Result == nil || w.cfg.Results == nil) {
		return
	}
	w.shards[ShardOf(s.id())].queue(s)
}

// Offer queues a bare write s (no Delivery) like Queue when its shard has
// room, and drops it otherwise, without waiting. It is for writes that a
// later one supersedes, such as progress reports, which must never hold up
// the task that makes them while the result backend is slow or down (the
// task's outcome carries its last progress). A settlement with a Delivery
// is queued as by Queue. Offer reports whether s was queued.
func (w *Writer) Offer(s Settlement) bool {
	if s.Delivery != nil {
		w.Queue(s)
		return true
	}
	if s.Result == nil || w.cfg.Results == nil {
		return false
	}
	return w.shards[ShardOf(s.id())].offer(s)
}

// Run runs every shard until Close; ctx bounds the retries of a failing
// backend.
func (w *Writer) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, sh := range w.shards {
		wg.Go(func() { sh.run(ctx) })
	}
	wg.Wait()
}

// Close flushes what every shard has queued and stops Run; ctx bounds
// the final flush, in which a failing write is tried a few times only.
// Settlements queued after Close returned are dropped. Call it once, after
// Run was started: it waits for Run's shards to finish.
func (w *Writer) Close(ctx context.Context) {
	for _, sh := range w.shards {
		sh.finalCtx = ctx
	}
	for _, sh := range w.shards {
		sh.close()
	}
}

// shard is one of the Writer's independent writers.
type shard struct {
	// finalCtx bounds the flushes after close; set before closing is
	// closed, read after.
	finalCtx context.Context

	cfg     *Config
	acker   stemdriver.ResultAcker // the Writer's
	gaveUp  *atomic.Int64          // the Writer's count
	failing *sync.Map              // the Writer's
	in      chan Settlement
	closing chan struct{}
	done    chan struct{}
	once    sync.Once

	// Deferred writes, owned by run: held orders them by due time, and
	// current maps a task id to the sequence number of its one live held
	// write (entries of held with another number were replaced).
	held    heldWrites
	current map[string]uint64
	seq     uint64
}

// heldWrite is a deferred write waiting in a shard.
type heldWrite struct {
	s   Settlement
	id  string
	due time.Time
	seq uint64
}

// heldWrites is a min-heap of held writes by due time (container/heap).
type heldWrites []heldWrite

func (h heldWrites) Len() int           { return len(h) }
func (h heldWrites) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h heldWrites) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *heldWrites) Push(x any)        { *h = append(*h, x.(heldWrite)) }
func (h *heldWrites) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// accept adds s to the batch, or holds it when it is a deferred write; a
// later settlement of a task replaces the task's held write.
func (sh *shard) accept(batch *[]Settlement, s Settlement) {
	id := s.id()
	if len(sh.current) > 0 {
		delete(sh.current, id)
	}
	if s.Defer > 0 && s.Delivery == nil {
		if sh.current == nil {
			sh.current = make(map[string]uint64)
		}
		sh.seq++
		sh.current[id] = sh.seq
		heap.Push(&sh.held, heldWrite{s: s, id: id, due: time.Now().Add(s.Defer), seq: sh.seq})
		return
	}
	*batch = append(*batch, s)
}

// takeDue moves the held writes due by now (all of them when all is set)
// to the batch, and drops those that were replaced.
func (sh *shard) takeDue(batch *[]Settlement, now time.Time, all bool) {
	for sh.held.Len() > 0 && (all || !sh.held[0].due.After(now)) {
		h := heap.Pop(&sh.held).(heldWrite)
		if seq, ok := sh.current[h.id]; ok && seq == h.seq {
			delete(sh.current, h.id)
			*batch = append(*batch, h.s)
		}
	}
}

func (sh *shard) queue(s Settlement) {
	// Checked first: once run has returned, the queue may still have room,
	// and a select with both ready would leave s there unread.
	select {
	case <-sh.done:
		sh.finished(s)
		return
	default:
	}
	select {
	case sh.in <- s:
	case <-sh.done:
		sh.finished(s)
	}
}

func (sh *shard) offer(s Settlement) bool {
	select {
	case <-sh.done:
		return false
	default:
	}
	select {
	case sh.in <- s:
		return true
	default:
		return false
	}
}

// finished tells Config.Done the writer is done with s's delivery.
func (sh *shard) finished(s Settlement) {
	if s.Delivery != nil && sh.cfg.Done != nil {
		sh.cfg.Done(s.Delivery)
	}
}

func (sh *shard) isClosing() bool {
	select {
	case <-sh.closing:
		return true
	default:
		return false
	}
}

// close flushes what is queued and stops run.
func (sh *shard) close() {
	sh.once.Do(func() { close(sh.closing) })
	<-sh.done
}

// run flushes batches until close; ctx only bounds the retries of a
// failing backend.
func (sh *shard) run(ctx context.Context) {
	defer close(sh.done)
	batch := make([]Settlement, 0, batchMax)
	wake := time.NewTimer(time.Hour)
	defer wake.Stop()
	for {
		batch = batch[:0]
		var due <-chan time.Time
		if sh.held.Len() > 0 {
			wake.Reset(time.Until(sh.held[0].due))
			due = wake.C
		}
		select {
		case s := <-sh.in:
			sh.accept(&batch, s)
		case <-due:
		case <-sh.closing:
			fctx := sh.finalCtx
			if fctx == nil {
				fctx = ctx
			}
			for {
				batch = batch[:0]
				// Everything queued first, without a time bound: a held
				// write goes out only once no later write of its task
				// can still be waiting in the queue to replace it.
				drained := sh.drain(&batch)
				if drained {
					sh.takeDue(&batch, time.Time{}, true)
				}
				if len(batch) == 0 {
					return
				}
				sh.flush(fctx, batch, true)
			}
		}
		sh.takeDue(&batch, time.Now(), false)
		if len(batch) == 0 {
			continue // only replaced writes fell due, or one was held
		}
		sh.collect(&batch)
		sh.takeDue(&batch, time.Now(), false)
		sh.flush(ctx, batch, false)
	}
}

// drain adds what is queued, up to batchMax, without waiting, and
// reports whether the queue is empty.
func (sh *shard) drain(batch *[]Settlement) bool {
	for len(*batch) < batchMax {
		select {
		case s := <-sh.in:
			sh.accept(batch, s)
		default:
			return true
		}
	}
	return false
}

// collect adds whatever arrives within batchInterval, up to batchMax.
func (sh *shard) collect(batch *[]Settlement) {
	t := time.NewTimer(batchInterval)
	defer t.Stop()
	for len(*batch) < batchMax {
		select {
		case s := <-sh.in:
			sh.accept(batch, s)
		case <-t.C:
			return
		}
	}
}

// flush writes the batch's results with one Put, then settles its
// deliveries; final marks the flushes after close. Where the broker
// acknowledges with the results (a ResultAcker), the results and the
// acknowledgements go in one PutAck.
func (sh *shard) flush(ctx context.Context, batch []Settlement, final bool) {
	cfg := sh.cfg
	acked := false // the batch's acks went with its results
	if cfg.Results != nil {
		results := make([]*stemtype.TaskResult, 0, len(batch))
		last := make(map[string]int, len(batch))
		for _, s := range batch {
			if s.Result == nil || (s.Superseded != nil && s.Superseded.Load()) {
				continue
			}
			// Later writes of one task supersede earlier ones in the
			// batch, except a final one: as in the backend, no write
			// replaces it (two copies of a task, a duplicate publish or
			// a redelivery, may share a batch).
			if i, ok := last[s.Result.ID]; ok {
				if !results[i].State.Final() {
					results[i] = s.Result
				}
				continue
			}
			last[s.Result.ID] = len(results)
			results = append(results, s.Result)
		}
		var put func(ctx context.Context) error
		what := "write results"
		var acks []stemdriver.Delivery
		if sh.acker != nil && len(results) > 0 {
			acks = ackOf(batch)
		}
		if len(acks) > 0 {
			what, acked = "write results and ack tasks", true
			put = func(ctx context.Context) error { return sh.acker.PutAck(ctx, cfg.Results, results, acks) }
		} else {
			put = func(ctx context.Context) error { return cfg.Results.Put(ctx, results...) }
		}
		// (A PutAck that reports ErrLeaseLost succeeded: the results were
		// written and the deliveries still held were acknowledged.)
		if len(results) > 0 && !sh.retry(ctx, final, what, put) {
			// Never acknowledge an outcome that was not recorded: those
			// deliveries are left to their leases, which lapse once they
			// are forgotten, and the tasks run again elsewhere. A
			// delivery whose settlement records no result (a task found
			// finished already, say) goes ahead: the failed write was
			// not its own.
			// Counted before Done is called, so that GaveUp includes
			// every delivery reported done.
			var unrecorded, kept []Settlement
			for _, s := range batch {
				switch {
				case s.Delivery == nil:
				case s.Result != nil:
					unrecorded = append(unrecorded, s)
				default:
					kept = append(kept, s)
				}
			}
			// Nothing of a failed PutAck happened: the kept deliveries go
			// on to a plain Ack below.
			acked = false
			sh.gaveUp.Add(int64(len(unrecorded)))
			cfg.Logger.Error("results not written: leaving their tasks to lease expiry", "results", len(results), "tasks", len(unrecorded))
			for _, s := range unrecorded {
				sh.finished(s)
			}
			batch = kept
		}
	}
	var acks, releases []stemdriver.Delivery
	for _, s := range batch {
		if s.Delivery == nil {
			continue
		}
		d := *s.Delivery
		switch s.Op {
		case Ack:
			if !acked {
				acks = append(acks, d)
			}
		case Release:
			releases = append(releases, d)
		case Retry:
			sh.settle(1, sh.retry(ctx, final, "retry task", func(ctx context.Context) error {
				return cfg.Broker.Retry(ctx, d, s.Next)
			}))
		case DeadLetter:
			sh.settle(1, sh.retry(ctx, final, "dead-letter message", func(ctx context.Context) error {
				return cfg.Broker.DeadLetter(ctx, d, s.Reason)
			}))
		}
	}
	if len(acks) > 0 {
		sh.settle(len(acks), sh.retry(ctx, final, "ack tasks", func(ctx context.Context) error { return cfg.Broker.Ack(ctx, acks...) }))
	}
	if len(releases) > 0 {
		sh.settle(len(releases), sh.retry(ctx, final, "release tasks", func(ctx context.Context) error { return cfg.Broker.Release(ctx, releases...) }))
	}
	for _, s := range batch {
		sh.finished(s)
	}
}

// ackOf returns the deliveries of batch to acknowledge.
func ackOf(batch []Settlement) []stemdriver.Delivery {
	var acks []stemdriver.Delivery
	for _, s := range batch {
		if s.Delivery != nil && s.Op == Ack {
			acks = append(acks, *s.Delivery)
		}
	}
	return acks
}

// settle counts n deliveries given up on when ok is false.
func (sh *shard) settle(n int, ok bool) {
	if !ok {
		sh.gaveUp.Add(int64(n))
	}
}

// retry runs op until it succeeds, the lease is gone (another worker owns
// the task then), ctx ends, or Config.GiveUpAfter has passed since the
// first try; during the final flush, or once closing, it tries a few times
// only, and while an earlier retry of the same operation (what) gave up
// and none succeeded since, once only. The held delivery keeps its lease
// renewed meanwhile. It reports whether op succeeded (a lost lease counts:
// nothing is left to do); when it did not, the deliveries are left to
// their leases.
func (sh *shard) retry(ctx context.Context, final bool, what string, op func(context.Context) error) bool {
	log := sh.cfg.Logger
	backoff := 50 * time.Millisecond
	deadline := time.Now().Add(sh.cfg.GiveUpAfter)
	for attempt := 1; ; attempt++ {
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := op(octx)
		cancel()
		if err == nil {
			if _, was := sh.failing.LoadAndDelete(what); was {
				log.Info(what + ": working again")
			}
			return true
		}
		if errors.Is(err, stemdriver.ErrLeaseLost) {
			log.Warn(what+": lease lost, another worker owns the task now", "err", err)
			return true
		}
		left := time.Until(deadline)
		_, failing := sh.failing.Load(what)
		if ctx.Err() != nil || ((final || sh.isClosing()) && attempt >= 3) || failing || left <= 0 {
			if ctx.Err() == nil && !final {
				sh.failing.Store(what, true)
			}
			log.Error(what+": giving up, leaving the tasks to lease expiry", "err", err, "attempts", attempt)
			return false
		}
		log.Error(what+" failed: retrying", "err", err, "retry_in", backoff)
		if !sleepCtx(ctx, min(backoff, left)) {
			return false
		}
		backoff = min(backoff*2, 5*time.Second)
	}
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
