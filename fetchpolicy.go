package stem

import (
	"sync/atomic"
	"time"
)

// Fair dispatch (issue 16). A worker may claim more tasks than it has
// slots (WorkerConfig.Prefetch), so that a drain of short tasks costs one
// claim round trip per batch rather than per task. The same buffer strands
// a long task behind a busy worker while another worker idles (Celery's
// prefetch-multiplier trap). fetchPolicy keeps the first and prevents the
// second:
//
//   - It claims beyond the free slots only while recent tasks run faster
//     than fastRatio claim round trips (an exponentially weighted moving
//     average of each, see prefetching). Until a task has finished, and for
//     longer tasks, it claims for free slots only, as asynq, River and
//     Sidekiq do: a task then waits in no worker's buffer at all.
//   - Even for short tasks, a worker whose slots are all taken claims only
//     what is ready (claimWait): it never sits in a blocking claim, taking
//     the next task published, while another worker has a free slot.
//   - When tasks wait in the buffer while no slot has freed for
//     handBackAfter (every slot is busy with something slow), the worker
//     hands them all back to the broker (Broker.Release makes them
//     claimable by every worker at once) and records the stall as a slow
//     run time, so that it does not claim beyond its free slots again until
//     tasks run fast again: a task handed back is not re-claimed by the
//     worker that could not start it.
//
// Its methods are safe for concurrent use: runners report finished tasks,
// the fetch loop asks what to claim, and inspect reads nothing of it.
type fetchPolicy struct {
	concurrency int64
	limit       int64 // concurrency + prefetch: the most tasks held at once
	lowWater    int64 // a busy worker claims once this much room is free
	eager       bool  // WorkerConfig.EagerPrefetch: always prefetch, never hand back

	run      atomic.Int64 // moving average of task run time, ns; 0 until a task finished
	rtt      atomic.Int64 // moving average of the claim round trip, ns; 0 until measured
	epoch    time.Time    // the policy's creation: times are kept as ns since, on the monotonic clock
	lastFree atomic.Int64 // when a slot last freed, ns since epoch
	full     atomic.Bool  // the last claim returned as many tasks as it asked for
}

const (
	// fastRatio: tasks shorter than this many claim round trips are
	// short; the worker prefetches for them.
	fastRatio = 4
	// rttFloor and rttCap bound the round trip the policy works with: a
	// claim on the memory broker takes microseconds, a task's bookkeeping
	// more; a measured round trip above the cap is a claim that waited
	// for a task to be published, not a round trip.
	rttFloor = 250 * time.Microsecond
	rttCap   = 25 * time.Millisecond
	// minHandBack is the shortest wait, with no slot freed, after which
	// a worker hands back the tasks in its buffer.
	minHandBack = 100 * time.Millisecond
	// ewmaShift: each sample moves an average by 1/8 of the difference.
	ewmaShift = 3
)

// newFetchPolicy returns the policy of a worker with concurrency slots
// that may hold prefetch more tasks; an eager one always claims up to the
// limit and never hands tasks back (WorkerConfig.EagerPrefetch).
func newFetchPolicy(concurrency, prefetch int, eager bool) *fetchPolicy {
	limit := int64(concurrency + prefetch)
	return &fetchPolicy{concurrency: int64(concurrency), limit: limit, lowWater: max(1, limit/4), eager: eager,
		epoch: time.Now()}
}

// ewma folds sample into the moving average v (0: no sample yet).
func ewma(v *atomic.Int64, sample time.Duration) {
	s := max(int64(sample), 1) // 0 means "none yet"
	for {
		old := v.Load()
		next := s
		if old != 0 {
			next = max(old+(s-old)>>ewmaShift, 1)
		}
		if v.CompareAndSwap(old, next) {
			return
		}
	}
}

// finished records a task that ran from start to end: its run time, and
// that a slot freed at end.
func (p *fetchPolicy) finished(start, end time.Time) {
	ewma(&p.run, end.Sub(start))
	p.lastFree.Store(int64(end.Sub(p.epoch)))
}

// claimed records a claim that took d and returned got of the max tasks
// it asked for; blocking says it was allowed to wait for a publish. A
// claim that could not wait measures the round trip, and so does a
// blocking one made while the previous one came back full (the queue had
// tasks ready, so it did not wait).
func (p *fetchPolicy) claimed(d time.Duration, got, max int, blocking bool) {
	if !blocking || (got > 0 && p.full.Load()) {
		ewma(&p.rtt, min(d, rttCap))
	}
	p.full.Store(got >= max)
}

// claimWait returns how long a claim made with outstanding tasks held may
// wait for a publish: configured (WorkerConfig.ClaimWait) while a slot is
// free, and 0 once every slot is taken, so that a task published then goes
// to a worker with a free slot rather than into this one's buffer (an
// eager policy always waits).
func (p *fetchPolicy) claimWait(outstanding int64, configured time.Duration) time.Duration {
	if p.eager || outstanding < p.concurrency {
		return configured
	}
	return 0
}

// threshold is the run time below which tasks count as short:
// fastRatio claim round trips. It lies between fastRatio×rttFloor and
// fastRatio×rttCap, below handBackAfter.
func (p *fetchPolicy) threshold() time.Duration {
	// Not measured yet (0): the floor, a local round trip.
	rtt := time.Duration(p.rtt.Load())
	return fastRatio * min(max(rtt, rttFloor), rttCap)
}

// prefetching reports whether the worker claims beyond its free slots:
// only once tasks have finished, and while they run shorter than the
// threshold on average (always, when eager).
func (p *fetchPolicy) prefetching() bool {
	if p.eager {
		return true
	}
	run := p.run.Load()
	return run != 0 && time.Duration(run) < p.threshold()
}

// claimMax returns how many tasks to claim now with outstanding tasks held
// (running or waiting for a slot); 0 means wait until a slot frees. Short
// tasks: up to the limit, but a worker whose slots are all busy waits
// until a quarter of the limit is free, so that it claims in batches.
// Otherwise: the free slots.
func (p *fetchPolicy) claimMax(outstanding int64) int {
	if !p.prefetching() {
		return int(max(0, p.concurrency-outstanding))
	}
	free := p.limit - outstanding
	if free <= 0 || (outstanding >= p.concurrency && free < p.lowWater) {
		return 0
	}
	return int(free)
}

// handBackAfter is how long tasks wait in the buffer, with no slot freed
// meanwhile, before the worker hands them back: minHandBack, or twice the
// threshold when that is longer, so that a task that counts as short
// never triggers it.
func (p *fetchPolicy) handBackAfter() time.Duration {
	return max(minHandBack, 2*p.threshold())
}

// stalled reports whether, at now, no slot has freed for handBackAfter
// and, unless oldest is zero, the oldest task waiting in the buffer
// (claimed at oldest) has waited as long: every slot stayed busy while it
// waited. An eager policy is never stalled.
func (p *fetchPolicy) stalled(now, oldest time.Time) bool {
	if p.eager {
		return false
	}
	since := p.lastFree.Load()
	if !oldest.IsZero() {
		since = max(since, int64(oldest.Sub(p.epoch)))
	}
	return int64(now.Sub(p.epoch))-since >= int64(p.handBackAfter())
}

// handedBack records that the worker handed its buffer back: the tasks
// running take at least handBackAfter, which is above any threshold, so
// the worker claims for free slots only until short tasks bring the
// average run time down again.
func (p *fetchPolicy) handedBack() {
	floor := int64(p.handBackAfter())
	for {
		old := p.run.Load()
		if old >= floor || p.run.CompareAndSwap(old, floor) {
			return
		}
	}
}
