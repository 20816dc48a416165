package stem

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/stem-go/stem/stemtype"
)

// groupRecorder is a committer's store that records the groups it is
// given and can be held: while hold is open, a store waits on it.
type groupRecorder struct {
	mu      sync.Mutex
	groups  [][]string
	hold    chan struct{}
	started chan struct{} // receives once per store, when set
	err     error
}

func (g *groupRecorder) store(_ context.Context, envs []*stemtype.Envelope, pend []*stemtype.TaskResult) error {
	g.mu.Lock()
	ids := make([]string, len(envs))
	for i, e := range envs {
		ids[i] = e.ID
		if pend != nil && pend[i].ID != e.ID {
			panic("pending state of another task")
		}
	}
	g.groups = append(g.groups, ids)
	hold := g.hold
	g.mu.Unlock()
	if g.started != nil {
		g.started <- struct{}{}
	}
	if hold != nil {
		<-hold
	}
	return g.err
}

func opFor(id string) *enqueueOp {
	return &enqueueOp{env: &stemtype.Envelope{ID: id, Task: "t", Queue: "q"}, wake: make(chan bool, 1)}
}

// TestGroupCommitLoneCallStoresAtOnce: a call with nobody else around is
// stored by itself, in its own goroutine, before submit returns.
func TestGroupCommitLoneCallStoresAtOnce(t *testing.T) {
	rec := &groupRecorder{}
	c := &committer{store: rec.store, pending: true}
	for i := range 3 {
		if _, err := c.submit(t.Context(), opFor(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if want := [][]string{{"0"}, {"1"}, {"2"}}; !slices.EqualFunc(rec.groups, want, slices.Equal) {
		t.Errorf("groups = %v, want %v", rec.groups, want)
	}
	if c.storing != 0 || len(c.queue) != 0 {
		t.Errorf("after the calls: %d storing, %d queued; want idle", c.storing, len(c.queue))
	}
}

// TestGroupCommitCoalescesWaitingCalls: calls that arrive while a store is
// under way are stored together, in arrival order, in one store.
func TestGroupCommitCoalescesWaitingCalls(t *testing.T) {
	rec := &groupRecorder{hold: make(chan struct{}), started: make(chan struct{}, 10)}
	queued := make(chan struct{}, 100)
	c := &committer{store: rec.store, queued: func() { queued <- struct{}{} }}
	var wg sync.WaitGroup
	errs := make([]error, 11)
	wg.Go(func() { _, errs[0] = c.submit(t.Context(), opFor("first")) })
	// Wait until the first call is storing, then queue ten more, one at a
	// time so that their order is known.
	<-rec.started
	for i := range 10 {
		wg.Go(func() { _, errs[i+1] = c.submit(t.Context(), opFor(fmt.Sprint(i))) })
		<-queued
	}
	close(rec.hold)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("call %d: %v", i, err)
		}
	}
	want := [][]string{{"first"}, {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}}
	if !slices.EqualFunc(rec.groups, want, slices.Equal) {
		t.Errorf("groups = %v, want %v", rec.groups, want)
	}
}

// TestGroupCommitFailureReachesEveryCall: a failed store fails every call
// of its group.
func TestGroupCommitFailureReachesEveryCall(t *testing.T) {
	boom := errors.New("boom")
	rec := &groupRecorder{hold: make(chan struct{}), err: boom}
	queued := make(chan struct{}, 10)
	c := &committer{store: rec.store, queued: func() { queued <- struct{}{} }}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { _, errs[i] = c.submit(t.Context(), opFor(fmt.Sprint(i))) })
	}
	for range 3 {
		<-queued // one leads, three queue
	}
	close(rec.hold)
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, boom) {
			t.Errorf("call %d: err = %v, want boom", i, err)
		}
	}
	if len(rec.groups) != 2 {
		t.Errorf("groups = %v, want 2", rec.groups)
	}
}

// TestGroupCommitCancelledWhileQueued: a call whose context ends while it
// waits leaves the queue, reports that nothing was stored, and is not in
// the next group.
func TestGroupCommitCancelledWhileQueued(t *testing.T) {
	rec := &groupRecorder{hold: make(chan struct{}), started: make(chan struct{}, 10)}
	queued := make(chan struct{}, 10)
	c := &committer{store: rec.store, queued: func() { queued <- struct{}{} }}
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := c.submit(t.Context(), opFor("leader")); err != nil {
			t.Errorf("leader: %v", err)
		}
	})
	<-rec.started
	ctx, cancel := context.WithCancel(t.Context())
	var stored bool
	var cancelErr error
	cancelled := make(chan struct{})
	go func() {
		defer close(cancelled)
		stored, cancelErr = c.submit(ctx, opFor("cancelled"))
	}()
	<-queued
	wg.Go(func() {
		if _, err := c.submit(t.Context(), opFor("kept")); err != nil {
			t.Errorf("kept: %v", err)
		}
	})
	<-queued
	cancel()
	// The cancelled call returns while the leader's store is still held.
	<-cancelled
	close(rec.hold)
	wg.Wait()
	if stored || !errors.Is(cancelErr, context.Canceled) {
		t.Errorf("cancelled call: stored %v, err %v; want not stored, context.Canceled", stored, cancelErr)
	}
	want := [][]string{{"leader"}, {"kept"}}
	if !slices.EqualFunc(rec.groups, want, slices.Equal) {
		t.Errorf("groups = %v, want %v", rec.groups, want)
	}
}

// TestGroupCommitSeveralStoresUnderWay: with maxStores 2, a second call
// stores at once beside a first one still under way, a third and fourth
// queue, and they are stored once one of the two ends.
func TestGroupCommitSeveralStoresUnderWay(t *testing.T) {
	rec := &groupRecorder{hold: make(chan struct{}), started: make(chan struct{}, 10)}
	queued := make(chan struct{}, 10)
	c := &committer{store: rec.store, maxStores: 2, queued: func() { queued <- struct{}{} }}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	ids := []string{"a", "b", "c", "d"}
	for i, id := range ids[:2] {
		wg.Go(func() { _, errs[i] = c.submit(t.Context(), opFor(id)) })
		<-rec.started // a second store starts while the first is held
	}
	for i, id := range ids[2:] {
		wg.Go(func() { _, errs[i+2] = c.submit(t.Context(), opFor(id)) })
		<-queued
	}
	close(rec.hold)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("call %d: %v", i, err)
		}
	}
	if want := [][]string{{"a"}, {"b"}}; len(rec.groups) < 3 || !slices.EqualFunc(rec.groups[:2], want, slices.Equal) {
		t.Fatalf("groups = %v, want %v then c and d", rec.groups, want)
	}
	if rest := slices.Sorted(slices.Values(slices.Concat(rec.groups[2:]...))); !slices.Equal(rest, []string{"c", "d"}) {
		t.Errorf("groups = %v, want c and d stored after a and b", rec.groups)
	}
	if c.storing != 0 || len(c.queue) != 0 {
		t.Errorf("after the calls: %d storing, %d queued; want idle", c.storing, len(c.queue))
	}
}
