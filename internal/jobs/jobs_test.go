package jobs_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stem-go/stem/internal/jobs"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func delivery(id, receipt string) stemdriver.Delivery {
	return stemdriver.Delivery{Envelope: &stemtype.Envelope{ID: id, Task: "t", Queue: "q"}, Queue: "q", Receipt: receipt}
}

// The same message claimed again (same queue and receipt, as a Redis
// stream entry is after its lease lapsed) replaces the older job; the
// older job's Forget then leaves the newer one held.
func TestForgetKeepsANewerClaimOfTheSameMessage(t *testing.T) {
	tb := jobs.NewTable()
	old := tb.Add([]stemdriver.Delivery{delivery("a", "r1")}, time.Minute, t0)[0]
	cur := tb.Add([]stemdriver.Delivery{delivery("a", "r1")}, time.Minute, t0)[0]
	tb.Start(cur, t0, func(error) {}, false)
	tb.Forget(&old.D)
	if n := tb.Running(); n != 1 {
		t.Fatalf("forgetting the older claim dropped the newer one: %d running", n)
	}
	tb.Forget(&cur.D)
	if n := tb.Running(); n != 0 {
		t.Fatalf("%d running after Forget", n)
	}
}

// Running counts started jobs until they settle; Abandon hands back every
// job whose outcome is not decided, and keeps the settled ones.
func TestRunningAndAbandon(t *testing.T) {
	tb := jobs.NewTable()
	js := tb.Add([]stemdriver.Delivery{delivery("a", "1"), delivery("b", "2"), delivery("c", "3")}, time.Minute, t0)
	tb.Start(js[0], t0, func(error) {}, false)
	tb.Start(js[1], t0, func(error) {}, false)
	if n := tb.Running(); n != 2 {
		t.Fatalf("running %d, want 2", n)
	}
	tb.MarkSettled(js[1])
	if n := tb.Running(); n != 1 || !js[1].Settled() {
		t.Fatalf("running %d after settling one (settled %v), want 1", n, js[1].Settled())
	}
	var got []string
	for _, d := range tb.Abandon() {
		got = append(got, d.Envelope.ID)
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"a", "c"}) {
		t.Fatalf("abandoned %v, want the unsettled a and c", got)
	}
	if len(tb.Abandon()) != 0 {
		t.Fatal("abandoned jobs are still held")
	}
	if held := tb.Held(map[string]bool{"b": true}); !slices.Equal(held, []string{"b"}) {
		t.Fatalf("the settled job is no longer held: %v", held)
	}
}

// Renewals are due once less than two thirds of a lease is left, lost
// leases are skipped, and the next look comes within a quarter of the
// shortest lease held.
func TestDue(t *testing.T) {
	tb := jobs.NewTable()
	js := tb.Add([]stemdriver.Delivery{delivery("a", "1"), delivery("b", "2")}, 30*time.Second, t0)
	due, next := tb.Due(t0, 7*time.Second)
	if len(due) != 0 || next != 7*time.Second {
		t.Fatalf("fresh leases: due %d, next %v", len(due), next)
	}
	tb.SetMinLease(js[1], 8*time.Second)
	if d := tb.LeaseFor(js[1], 8*time.Second, t0); d != 30*time.Second {
		t.Fatalf("LeaseFor moved the deadline earlier: %v", d)
	}
	// a has 19s left of a 30s lease (due), b 19s left of an 8s one.
	due, next = tb.Due(t0.Add(11*time.Second), time.Minute)
	if len(due) != 1 || due[0] != js[0] || next != 2*time.Second {
		t.Fatalf("after 11s: due %d (want a alone), next %v (want a quarter of 8s)", len(due), next)
	}
	if held, first := tb.LeaseLost(js[0], errors.New("lost")); !held || !first {
		t.Fatalf("LeaseLost: held %v first %v", held, first)
	}
	due, _ = tb.Due(t0.Add(25*time.Second), time.Minute)
	if len(due) != 1 || due[0] != js[1] {
		t.Fatalf("after 25s: due %d, want b alone (a's lease is lost)", len(due))
	}
}

// A request for a lease never shortens it: the duration never goes below
// the task's own lease, and the deadline never moves earlier.
func TestLeaseForNeverShortens(t *testing.T) {
	tb := jobs.NewTable()
	j := tb.Add([]stemdriver.Delivery{delivery("a", "1")}, 10*time.Second, t0)[0]
	tb.SetMinLease(j, 20*time.Second)
	if d := tb.LeaseFor(j, time.Second, t0); d != 20*time.Second {
		t.Fatalf("a 1s request under a 20s task lease asked for %v", d)
	}
	tb.Extended(j, t0.Add(time.Hour))
	if d := tb.LeaseFor(j, 0, t0); d != time.Hour {
		t.Fatalf("a renewal would move the deadline an hour away earlier: %v", d)
	}
	tb.Extended(j, t0.Add(time.Minute)) // an older renewal answering late
	if d := tb.LeaseFor(j, 0, t0); d != time.Hour {
		t.Fatalf("a late, shorter renewal moved the deadline earlier: %v", d)
	}
	if d := tb.LeaseFor(j, 0, t0.Add(2*time.Hour)); d != 20*time.Second {
		t.Fatalf("lease for an expired deadline: %v, want the lease duration", d)
	}
}

// A lost lease cancels the running task once, with the given cause; a
// loss reported after the job settled or was forgotten loses nothing.
func TestLeaseLost(t *testing.T) {
	tb := jobs.NewTable()
	js := tb.Add([]stemdriver.Delivery{delivery("a", "1"), delivery("b", "2"), delivery("c", "3")}, time.Minute, t0)
	ctx, cancel := context.WithCancelCause(context.Background())
	tb.Start(js[0], t0, cancel, false)
	cause := errors.New("lease lost")
	if held, first := tb.LeaseLost(js[0], cause); !held || !first || context.Cause(ctx) != cause {
		t.Fatalf("first loss: held %v first %v cause %v", held, first, context.Cause(ctx))
	}
	if held, first := tb.LeaseLost(js[0], cause); !held || first {
		t.Fatalf("second loss: held %v first %v", held, first)
	}
	if !js[0].Lost() {
		t.Fatal("job not marked lost")
	}
	tb.MarkSettled(js[1])
	if held, _ := tb.LeaseLost(js[1], cause); held || js[1].Lost() {
		t.Fatal("a settled job lost its lease")
	}
	tb.Forget(&js[2].D)
	if held, _ := tb.LeaseLost(js[2], cause); held || js[2].Lost() {
		t.Fatal("a forgotten job lost its lease")
	}
}

// Inflight lists running jobs only, oldest first, with their checkpoints.
func TestInflight(t *testing.T) {
	tb := jobs.NewTable()
	js := tb.Add([]stemdriver.Delivery{delivery("late", "1"), delivery("early", "2"), delivery("waiting", "3")}, time.Minute, t0)
	tb.Start(js[0], t0.Add(time.Second), func(error) {}, true)
	tb.Start(js[1], t0, func(error) {}, false)
	js[1].Heartbeat(t0.Add(2 * time.Second))
	js[1].SetProgress(&stemtype.Progress{Percent: 40})
	a := tb.Inflight(t0.Add(3 * time.Second))
	if len(a) != 2 || a[0].ID != "early" || a[1].ID != "late" {
		t.Fatalf("inflight %+v, want early then late", a)
	}
	if a[0].RuntimeMs != 3000 || !a[0].LastHeartbeatAt.Equal(t0.Add(2*time.Second)) || a[0].Progress.Percent != 40 || a[0].Isolated {
		t.Fatalf("early: %+v", a[0])
	}
	if !a[1].Isolated || !a[1].LastHeartbeatAt.IsZero() {
		t.Fatalf("late: %+v", a[1])
	}
}

// Held names the running or settling jobs among those asked for, each
// once, and never one waiting to start.
func TestHeld(t *testing.T) {
	tb := jobs.NewTable()
	js := tb.Add([]stemdriver.Delivery{delivery("a", "1"), delivery("a", "2"), delivery("b", "3"), delivery("c", "4")}, time.Minute, t0)
	tb.Start(js[0], t0, func(error) {}, false)
	tb.Start(js[1], t0, func(error) {}, false) // a duplicate of a
	tb.MarkSettled(js[2])
	got := tb.Held(map[string]bool{"a": true, "b": true, "c": true})
	slices.Sort(got)
	if !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("held %v, want a (once) and b; c waits to start", got)
	}
}

// EnforceTerminates cancels each running job under a terminate revoke
// once, with the cause terminate returns, ignores plain revokes and jobs
// not running, and relays each new kill-after to isolated jobs.
func TestEnforceTerminates(t *testing.T) {
	tb := jobs.NewTable()
	js := tb.Add([]stemdriver.Delivery{delivery("inline", "1"), delivery("iso", "2"), delivery("plain", "3"), delivery("waiting", "4")},
		time.Minute, t0)
	inlineCtx, cancelInline := context.WithCancelCause(context.Background())
	isoCtx, cancelIso := context.WithCancelCause(context.Background())
	plainCtx, cancelPlain := context.WithCancelCause(context.Background())
	tb.Start(js[0], t0, cancelInline, false)
	kill := tb.Start(js[1], t0, cancelIso, true)
	tb.Start(js[2], t0, cancelPlain, false)
	recs := map[string]stemtype.RevokeRecord{
		"inline":  {TaskID: "inline", Terminate: true},
		"iso":     {TaskID: "iso", Terminate: true, KillAfterMs: 5000},
		"plain":   {TaskID: "plain"},
		"waiting": {TaskID: "waiting", Terminate: true},
	}
	lookup := func(env *stemtype.Envelope) (stemtype.RevokeRecord, bool) { r, ok := recs[env.ID]; return r, ok }
	calls := map[string]int{}
	terminate := func(rec stemtype.RevokeRecord) error {
		calls[rec.TaskID]++
		return errors.New("revoked " + rec.TaskID)
	}
	got := tb.EnforceTerminates(lookup, terminate)
	slices.Sort(got)
	if !slices.Equal(got, []string{"inline", "iso"}) {
		t.Fatalf("terminating %v, want inline and iso", got)
	}
	if c := context.Cause(inlineCtx); c == nil || c.Error() != "revoked inline" || context.Cause(isoCtx) == nil {
		t.Fatalf("causes: inline %v, iso %v", c, context.Cause(isoCtx))
	}
	if plainCtx.Err() != nil {
		t.Fatal("a revoke without terminate cancelled its running task")
	}
	if d := <-kill; d != 5*time.Second {
		t.Fatalf("kill-after relayed %v", d)
	}
	// Again, as a re-sync does: nothing new to cancel or relay.
	tb.EnforceTerminates(lookup, terminate)
	if calls["inline"] != 1 || calls["iso"] != 1 || len(calls) != 2 {
		t.Fatalf("terminate calls %v, want one each for inline and iso", calls)
	}
	select {
	case d := <-kill:
		t.Fatalf("the same kill-after relayed twice: %v", d)
	default:
	}
	// A later revoke shortens the grace period: relayed.
	recs["iso"] = stemtype.RevokeRecord{TaskID: "iso", Terminate: true, KillAfterMs: 100}
	tb.EnforceTerminates(lookup, terminate)
	if d := <-kill; d != 100*time.Millisecond {
		t.Fatalf("the shorter kill-after relayed %v", d)
	}
	inflight := tb.Inflight(t0)
	for _, a := range inflight {
		if a.Terminating != (a.ID != "plain") {
			t.Fatalf("%s terminating %v", a.ID, a.Terminating)
		}
	}
}

// Waiting lists the jobs claimed and not yet started or settled, with
// their claim times.
func TestWaiting(t *testing.T) {
	tb := jobs.NewTable()
	js := tb.Add([]stemdriver.Delivery{delivery("run", "1"), delivery("done", "2")}, time.Minute, t0)
	later := tb.Add([]stemdriver.Delivery{delivery("wait", "3")}, time.Minute, t0.Add(time.Second))[0]
	tb.Start(js[0], t0, func(error) {}, false)
	tb.MarkSettled(js[1])
	w := tb.Waiting()
	if len(w) != 1 || w[0] != later || !w[0].ClaimedAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("waiting %v, want the job claimed at t0+1s alone", w)
	}
}
