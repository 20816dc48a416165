package stem

import (
	"sync"
	"testing"
	"time"
)

// ran records n tasks of run time d, each ending at end.
func ran(p *fetchPolicy, n int, d time.Duration, end time.Time) {
	for range n {
		p.finished(end.Add(-d), end)
	}
}

// Before any task finished, a worker claims for its free slots only: the
// first long tasks of a fleet spread over its workers.
func TestFetchPolicyFreeSlotsUntilATaskFinished(t *testing.T) {
	p := newFetchPolicy(2, 8, false)
	for out, want := range []int{2, 1, 0, 0, 0} {
		if got := p.claimMax(int64(out)); got != want {
			t.Fatalf("claimMax(%d) = %d before any task finished, want %d", out, got, want)
		}
	}
	if p.prefetching() {
		t.Fatal("prefetching before any task finished")
	}
}

// Tasks shorter than a few claim round trips turn prefetch on, with the
// batching of a busy worker (claim once a quarter of the room is free);
// long ones turn it off.
func TestFetchPolicyPrefetchesShortTasksOnly(t *testing.T) {
	now := time.Now()
	p := newFetchPolicy(10, 40, false) // limit 50, low water 12
	ran(p, 20, 50*time.Microsecond, now)
	if !p.prefetching() {
		t.Fatalf("not prefetching after 50µs tasks (threshold %v)", p.threshold())
	}
	for _, c := range []struct{ out, want int }{{0, 50}, {9, 41}, {10, 40}, {38, 12}, {39, 0}, {50, 0}, {60, 0}} {
		if got := p.claimMax(int64(c.out)); got != c.want {
			t.Fatalf("short tasks: claimMax(%d) = %d, want %d", c.out, got, c.want)
		}
	}
	ran(p, 40, 2*time.Second, now)
	if p.prefetching() {
		t.Fatalf("prefetching after 2s tasks (average %v, threshold %v)", time.Duration(p.run.Load()), p.threshold())
	}
	for _, c := range []struct{ out, want int }{{0, 10}, {9, 1}, {10, 0}, {30, 0}} {
		if got := p.claimMax(int64(c.out)); got != c.want {
			t.Fatalf("long tasks: claimMax(%d) = %d, want %d", c.out, got, c.want)
		}
	}
}

// The threshold follows the measured claim round trip, between its floor
// and its cap; only a claim that follows a full one measures it, and the
// hand-back bound stays above the threshold.
func TestFetchPolicyRoundTrip(t *testing.T) {
	p := newFetchPolicy(4, 16, false)
	if got := p.threshold(); got != fastRatio*rttFloor {
		t.Fatalf("threshold before a measure: %v, want %v", got, fastRatio*rttFloor)
	}
	// A claim after a partial one may have waited for a publish.
	p.claimed(time.Second, 1, 20, true)
	p.claimed(time.Second, 3, 20, true)
	if p.rtt.Load() != 0 {
		t.Fatalf("round trip measured from claims that may have waited: %v", time.Duration(p.rtt.Load()))
	}
	p.claimed(2*time.Millisecond, 20, 20, true) // full: the next one measures
	p.claimed(2*time.Millisecond, 20, 20, true)
	if got := p.threshold(); got != fastRatio*2*time.Millisecond {
		t.Fatalf("threshold %v after a 2ms round trip, want %v", got, fastRatio*2*time.Millisecond)
	}
	for range 100 {
		p.claimed(time.Minute, 20, 20, true)
	}
	if got := p.threshold(); got > fastRatio*rttCap || got < fastRatio*rttCap*99/100 {
		t.Fatalf("threshold %v after long claims, want about the cap's %v", got, fastRatio*rttCap)
	}
	if p.handBackAfter() <= p.threshold() || p.handBackAfter() < minHandBack {
		t.Fatalf("hand-back bound %v, threshold %v: want the bound above the threshold and at least %v",
			p.handBackAfter(), p.threshold(), minHandBack)
	}
	for range 100 {
		p.claimed(time.Microsecond, 20, 20, true)
	}
	if got := p.threshold(); got != fastRatio*rttFloor {
		t.Fatalf("threshold %v after 1µs claims, want the floor's %v", got, fastRatio*rttFloor)
	}
}

// A worker is stalled once no slot freed and its oldest waiting task
// waited for the hand-back bound; a slot that frees, or a task claimed
// lately, is no stall.
func TestFetchPolicyStalled(t *testing.T) {
	p := newFetchPolicy(2, 8, false)
	bound := p.handBackAfter()
	t0 := time.Now()
	ran(p, 1, time.Microsecond, t0) // a slot freed at t0
	if p.stalled(t0.Add(bound-time.Millisecond), time.Time{}) {
		t.Fatal("stalled before the bound passed since a slot freed")
	}
	if !p.stalled(t0.Add(bound), time.Time{}) {
		t.Fatal("not stalled once the bound passed since a slot freed")
	}
	claimed := t0.Add(time.Second)
	if p.stalled(claimed.Add(bound/2), claimed) {
		t.Fatal("stalled although the oldest task waited half the bound")
	}
	if !p.stalled(claimed.Add(bound), claimed) {
		t.Fatal("not stalled although the oldest task waited the bound with no slot freed")
	}
	ran(p, 1, time.Microsecond, claimed.Add(bound/2))
	if p.stalled(claimed.Add(bound), claimed) {
		t.Fatal("stalled although a slot freed while the task waited")
	}
}

// After a hand-back the worker claims for its free slots only (none, while
// every slot is busy), so the tasks it handed back go to other workers
// rather than back into its buffer; short tasks turn prefetch on again.
func TestFetchPolicyNoReclaimAfterHandBack(t *testing.T) {
	now := time.Now()
	p := newFetchPolicy(2, 8, false)
	ran(p, 50, 10*time.Microsecond, now)
	if got := p.claimMax(2); got != 8 {
		t.Fatalf("short tasks, both slots busy: claimMax = %d, want 8", got)
	}
	p.handedBack()
	if p.prefetching() {
		t.Fatal("prefetching right after a hand-back")
	}
	for out := int64(2); out <= 10; out++ {
		if got := p.claimMax(out); got != 0 {
			t.Fatalf("after a hand-back, %d held: claimMax = %d, want 0", out, got)
		}
	}
	// Whatever round trip is measured later, the hand-back keeps the
	// average above the threshold.
	for range 100 {
		p.claimed(time.Minute, 8, 8, true)
	}
	if p.prefetching() {
		t.Fatal("prefetching after a hand-back once the round trip rose")
	}
	ran(p, 200, 10*time.Microsecond, now)
	if !p.prefetching() {
		t.Fatalf("not prefetching after many short tasks (average %v)", time.Duration(p.run.Load()))
	}
}

// Runners report finished tasks concurrently with the fetch loop's reads
// and hand-backs: no update is torn (run with -race).
func TestFetchPolicyConcurrent(t *testing.T) {
	p := newFetchPolicy(8, 32, false)
	now := time.Now()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { ran(p, 1000, time.Millisecond, now) })
	}
	wg.Go(func() {
		for range 1000 {
			p.handedBack()
			_ = p.claimMax(4)
			p.claimed(time.Millisecond, 4, 4, false)
		}
	})
	wg.Wait()
	// Every task took 1ms and every hand-back raised the average to the
	// bound: it lies between the two.
	if got := time.Duration(p.run.Load()); got < time.Millisecond || got > p.handBackAfter() {
		t.Fatalf("average run time %v, want between 1ms and %v", got, p.handBackAfter())
	}
}

// An eager policy (WorkerConfig.EagerPrefetch) claims up to the limit from
// the start, whatever the tasks' run time, and never hands tasks back.
func TestFetchPolicyEager(t *testing.T) {
	p := newFetchPolicy(2, 8, true)
	now := time.Now()
	ran(p, 10, time.Minute, now)
	p.handedBack()
	for _, c := range []struct{ out, want int }{{0, 10}, {2, 8}, {8, 2}, {9, 0}} {
		if got := p.claimMax(int64(c.out)); got != c.want {
			t.Fatalf("eager: claimMax(%d) = %d, want %d", c.out, got, c.want)
		}
	}
	if p.stalled(now.Add(time.Hour), now) {
		t.Fatal("an eager policy stalled")
	}
}

// A claim may wait for a publish only while a slot is free: a worker whose
// slots are all taken takes what is ready and leaves later tasks to
// workers with a free slot. Such a claim measures the round trip, whatever
// it returned. An eager policy always waits.
func TestFetchPolicyClaimWait(t *testing.T) {
	p := newFetchPolicy(2, 8, false)
	for _, c := range []struct {
		out  int64
		want time.Duration
	}{{0, time.Second}, {1, time.Second}, {2, 0}, {9, 0}} {
		if got := p.claimWait(c.out, time.Second); got != c.want {
			t.Fatalf("claimWait(%d) = %v, want %v", c.out, got, c.want)
		}
	}
	p.claimed(3*time.Millisecond, 0, 8, false)
	if got := time.Duration(p.rtt.Load()); got != 3*time.Millisecond {
		t.Fatalf("round trip %v after an empty claim that could not wait, want 3ms", got)
	}
	if got := newFetchPolicy(2, 8, true).claimWait(5, time.Second); got != time.Second {
		t.Fatalf("eager: claimWait = %v, want the configured wait", got)
	}
}
