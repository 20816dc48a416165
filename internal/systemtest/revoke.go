package systemtest

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/isolated"
	"github.com/stem-go/stem/stemtype"
)

// A task revoked while it waits in the queue behind a busy worker never
// starts: it is cancelled with the revoke's metadata, and the worker goes
// on with the tasks after it.
func testRevokeQueuedTask(t *testing.T, h Harness) {
	d := open(t, h)
	started := make(chan string, 4)
	release := gatedTask(d, "block", started)
	victimRan := make(chan string, 1)
	stem.Register(d.reg, "victim", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		victimRan <- tc.TaskID()
		return nil, nil
	}, stem.TaskOptions{})
	_, stop := d.startWorker(stem.WorkerConfig{ID: "w1", Concurrency: 1, Prefetch: 1})
	t.Cleanup(release) // before the worker stops, should the case fail
	blocker := d.enqueue("block", stem.EnqueueOptions{})
	if got := await(t, started, "the blocker starts"); got != blocker {
		t.Fatalf("started %s, want the blocker %s", got, blocker)
	}
	victim := d.enqueue("victim", stem.EnqueueOptions{})
	res, err := d.ctl.Revoke(context.Background(), target(),
		stem.RevokeOptions{TaskIDs: []string{victim}, Reason: "bad data", RequestedBy: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Unknown) != 0 {
		t.Fatalf("revoke reports the enqueued task unknown: %+v", res)
	}
	checkRevokeMeta(t, d.wait(victim), "bad data", "ops")
	release()
	after := d.enqueue("block", stem.EnqueueOptions{})
	if got := await(t, started, "the task after the revoked one starts"); got != after {
		t.Fatalf("started %s, want %s", got, after)
	}
	if r := d.wait(after); r.State != stemtype.StateSucceeded {
		t.Fatalf("the task after the revoked one: %+v", r)
	}
	stop()
	noneOf(t, victimRan, "revoked while queued")
	checkRevokeMeta(t, d.wait(victim), "bad data", "ops")
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("queue depth %d, want 0: the revoked task is acknowledged", n)
	}
}

// A revoke issued while no worker is up is stored, marks the task
// cancelled at once, and a worker started afterwards loads it and never
// runs the task.
func testRevokeBeforeWorkerStarts(t *testing.T, h Harness) {
	d := open(t, h)
	ran := make(chan string, 4)
	stem.Register(d.reg, "victim", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		ran <- tc.TaskID()
		return nil, nil
	}, stem.TaskOptions{})
	done := make(chan string, 1)
	stem.Register(d.reg, "marker", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		done <- tc.TaskID()
		return nil, nil
	}, stem.TaskOptions{})
	victim := d.enqueue("victim", stem.EnqueueOptions{})
	res, err := d.ctl.Revoke(context.Background(), target(),
		stem.RevokeOptions{TaskIDs: []string{victim}, Reason: "stale", RequestedBy: "cron"})
	if err != nil || res.MarkErr != nil {
		t.Fatalf("revoke: %v, mark: %v", err, res.MarkErr)
	}
	if res.Replies == nil || res.Replies.Live == nil || len(res.Replies.Live) != 0 {
		t.Fatalf("revoke with no worker up: replies %+v, want no live worker", res.Replies)
	}
	got, err := d.roles.Results.Get(context.Background(), victim)
	if err != nil {
		t.Fatal(err)
	}
	checkRevokeMeta(t, got, "stale", "cron")
	_, stop := d.startWorker(stem.WorkerConfig{ID: "late", Concurrency: 1})
	marker := d.enqueue("marker", stem.EnqueueOptions{})
	if id := await(t, done, "the marker runs"); id != marker {
		t.Fatalf("marker ran as %s, want %s", id, marker)
	}
	d.wait(marker)
	stop()
	// Acknowledged, not released at shutdown: the worker met the victim
	// (ahead of the marker in the queue) and disposed of it unrun.
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("queue depth %d, want 0: the revoked task is acknowledged", n)
	}
	noneOf(t, ran, "revoked before the worker started")
	checkRevokeMeta(t, d.wait(victim), "stale", "cron")
}

// A terminate of a running inline task cancels its context with cause
// ErrTaskRevoked, its checkpoint (Heartbeat) returns an error matching
// ErrTaskRevoked, and it ends cancelled without a retry, whatever the
// handler returns.
func testTerminateInline(t *testing.T, h Harness) {
	d := open(t, h)
	started := make(chan struct{})
	var runs atomic.Int32
	type seen struct{ heartbeat, cause error }
	saw := make(chan seen, 1)
	// a retry would wait in the queue
	stem.Register(d.reg, "loop", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		if runs.Add(1) == 1 {
			close(started)
		}
		<-tc.Done()
		saw <- seen{heartbeat: tc.Heartbeat(), cause: context.Cause(tc)}
		return "ignored result", nil
	}, stem.TaskOptions{MaxRetries: 5,
		RetryPolicy: stem.ExponentialBackoff{Base: time.Hour}})
	_, stop := d.startWorker(stem.WorkerConfig{ID: "w1"})
	id := d.enqueue("loop", stem.EnqueueOptions{})
	await(t, started, "the task starts")
	d.waitState(id, stemtype.StateStarted)
	res, err := d.ctl.Revoke(context.Background(), target("w1"),
		stem.RevokeOptions{TaskIDs: []string{id}, Terminate: true, Reason: "runaway", RequestedBy: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	var rr stemtype.RevokeReply
	if reps := res.Replies.Replies; len(reps) != 1 || json.Unmarshal(reps[0].Payload, &rr) != nil ||
		!slices.Equal(rr.Inflight, []string{id}) {
		t.Fatalf("revoke replies %+v", res.Replies)
	}
	s := await(t, saw, "the terminated task sees its cancellation")
	if !errors.Is(s.heartbeat, stem.ErrTaskRevoked) || !errors.Is(s.cause, stem.ErrTaskRevoked) {
		t.Fatalf("heartbeat returned %v, context cause %v; want both to match ErrTaskRevoked", s.heartbeat, s.cause)
	}
	checkRevokeMeta(t, d.wait(id), "runaway", "ops")
	stop() // every outcome of the worker is settled once Run returned
	if n := runs.Load(); n != 1 {
		t.Fatalf("ran %d times, want 1", n)
	}
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("queue depth %d after terminate, want 0 (no retry)", n)
	}
	checkRevokeMeta(t, d.wait(id), "runaway", "ops")
}

// A terminate with a kill-after of a running isolated task that ignores
// its context and never checkpoints kills its child once the grace period
// is over: the task ends cancelled with the revoke's metadata, after one
// run and without a retry, and the pool replaces the killed child, so the
// next isolated task runs in a fresh one.
func testTerminateIsolatedKillAfter(t *testing.T, h Harness) {
	d := open(t, h)
	// Children built with the race detector would sleep a second at exit.
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	pool, err := isolated.NewPool(isolated.PoolConfig{Registry: d.reg, Size: 1, Logger: quiet(),
		Env: []string{"GORACE=" + gorace}, StartTimeout: waitBound})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pool.Close() }) // after the worker's Run returned
	_, stop := d.startWorker(stem.WorkerConfig{ID: "w1", Concurrency: 1, Prefetch: 1, Executor: pool})
	id := d.enqueue(taskSpinIsolated, stem.EnqueueOptions{})
	// The progress report says the task runs in its child: from there on
	// only a kill stops it.
	var spinner pidData
	d.waitFor("the isolated task reports its pid", func(ctx context.Context) bool {
		r, err := d.roles.Results.Get(ctx, id)
		return err == nil && r.State == stemtype.StateStarted && r.Progress != nil &&
			json.Unmarshal(r.Progress.Data, &spinner) == nil && spinner.PID > 0
	})
	res, err := d.ctl.Revoke(context.Background(), target("w1"), stem.RevokeOptions{TaskIDs: []string{id},
		Terminate: true, KillAfter: 200 * time.Millisecond, Reason: "runaway", RequestedBy: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	var rr stemtype.RevokeReply
	if reps := res.Replies.Replies; len(reps) != 1 || json.Unmarshal(reps[0].Payload, &rr) != nil ||
		!slices.Equal(rr.Inflight, []string{id}) {
		t.Fatalf("revoke replies %+v", res.Replies)
	}
	final := d.wait(id)
	checkRevokeMeta(t, final, "runaway", "ops")
	if final.Attempt != 0 || final.WorkerID != "w1" {
		t.Fatalf("result %+v, want the first attempt, on w1", final)
	}
	next := d.wait(d.enqueue(taskPIDIsolated, stem.EnqueueOptions{}))
	var fresh pidData
	if next.State != stemtype.StateSucceeded || json.Unmarshal(next.Result, &fresh) != nil ||
		fresh.PID <= 0 || fresh.PID == spinner.PID {
		t.Fatalf("the next isolated task: %+v, want it to succeed in a child other than the killed %d", next, spinner.PID)
	}
	if s := pool.Stats(); s.Started != 2 || s.Live != 1 {
		t.Fatalf("pool %+v, want two children started (the killed one replaced) and one alive", s)
	}
	s, err := d.ctl.Stats(context.Background(), target("w1"))
	if err != nil {
		t.Fatal(err)
	}
	var st stemtype.StatsReply
	if len(s.Replies) != 1 || json.Unmarshal(s.Replies[0].Payload, &st) != nil ||
		st.Processed != 2 || st.Cancelled != 1 || st.Succeeded != 1 || st.Failed != 0 || st.Retried != 0 {
		t.Fatalf("stats of w1: %+v (%+v), want two tasks processed: one cancelled, one succeeded, no retry", s, st)
	}
	stop() // every outcome of the worker is settled once Run returned
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("queue depth %d after the kill, want 0 (no retry)", n)
	}
	checkRevokeMeta(t, d.wait(id), "runaway", "ops")
}

// A revoked task that waits in a worker's prefetch (claimed, not started)
// is recorded cancelled as soon as the revoke returns: the worker applied
// the revoke before it replied, so the task can no longer start there, and
// the worker does not report it as held.
func testRevokeOfPrefetchedTaskIsMarkedAtOnce(t *testing.T, h Harness) {
	d := open(t, h)
	started := make(chan string, 4)
	release := gatedTask(d, "block", started)
	d.startWorker(stem.WorkerConfig{ID: "w1", Concurrency: 1, Prefetch: 4, EagerPrefetch: true})
	t.Cleanup(release) // before the worker stops
	blocker := d.enqueue("block", stem.EnqueueOptions{})
	if got := await(t, started, "the blocker starts"); got != blocker {
		t.Fatalf("started %s, want the blocker %s", got, blocker)
	}
	queued := d.enqueue("block", stem.EnqueueOptions{})
	d.waitDepth(stemtype.DefaultQueue, 0) // w1 holds the queued task in its prefetch
	ctx := context.Background()
	res, err := d.ctl.Revoke(ctx, target("w1"),
		stem.RevokeOptions{TaskIDs: []string{queued}, Reason: "not needed", RequestedBy: "test"})
	if err != nil || res.MarkErr != nil {
		t.Fatalf("revoke: %v, mark: %v", err, res.MarkErr)
	}
	var rr stemtype.RevokeReply
	if reps := res.Replies.Replies; len(reps) != 1 || json.Unmarshal(reps[0].Payload, &rr) != nil ||
		!slices.Contains(rr.Tasks, queued) || slices.Contains(rr.Held, queued) {
		t.Fatalf("revoke replies %+v (%+v), want w1's, applying the revoke of %s and not holding it", res.Replies, rr, queued)
	}
	got, err := d.roles.Results.Get(ctx, queued)
	if err != nil {
		t.Fatal(err)
	}
	checkRevokeMeta(t, got, "not needed", "test") // right after the revoke
}

// A task revoked without terminate while it runs goes on and is recorded
// succeeded.
func testRevokeWithoutTerminateLetsRunningTaskFinish(t *testing.T, h Harness) {
	d := open(t, h)
	started, release := make(chan struct{}), make(chan struct{})
	stem.Register(d.reg, "steady", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		close(started)
		<-release
		return "finished", tc.Heartbeat()
	}, stem.TaskOptions{})
	d.startWorker(stem.WorkerConfig{})
	id := d.enqueue("steady", stem.EnqueueOptions{})
	await(t, started, "the task starts")
	d.waitState(id, stemtype.StateStarted)
	if _, err := d.ctl.Revoke(context.Background(), target(), stem.RevokeOptions{TaskIDs: []string{id}}); err != nil {
		close(release)
		t.Fatal(err)
	}
	close(release)
	if res := d.wait(id); res.State != stemtype.StateSucceeded || string(res.Result) != `"finished"` {
		t.Fatalf("got %+v", res)
	}
}

// A newer revoke of the same task may add terminate to an earlier one
// that let the running task go on: the task ends cancelled with the newer
// revoke's reason.
func testNewerRevokeAddsTerminate(t *testing.T, h Harness) {
	d := open(t, h)
	started := make(chan struct{})
	stem.Register(d.reg, "loop", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		close(started)
		for {
			if err := tc.Heartbeat(); err != nil {
				return nil, err
			}
			time.Sleep(time.Millisecond) // the task's own work between checkpoints
		}
	}, stem.TaskOptions{})
	d.startWorker(stem.WorkerConfig{ID: "w1"})
	id := d.enqueue("loop", stem.EnqueueOptions{})
	await(t, started, "the task starts")
	d.waitState(id, stemtype.StateStarted)
	ctx := context.Background()
	if r, err := d.ctl.Revoke(ctx, target("w1"), stem.RevokeOptions{TaskIDs: []string{id}, Reason: "first"}); err != nil ||
		len(r.Replies.Replies) != 1 {
		t.Fatalf("first revoke: %+v %v", r, err)
	}
	// w1 applied the first revoke before it replied: the task still runs.
	if r, err := d.roles.Results.Get(ctx, id); err != nil || r.State != stemtype.StateStarted {
		t.Fatalf("a revoke without terminate stopped the running task: %+v %v", r, err)
	}
	if _, err := d.ctl.Revoke(ctx, target("w1"),
		stem.RevokeOptions{TaskIDs: []string{id}, Terminate: true, Reason: "second"}); err != nil {
		t.Fatal(err)
	}
	res := d.wait(id)
	if res.State != stemtype.StateCancelled || res.Meta[stemtype.MetaRevokedReason] != "second" {
		t.Fatalf("got %+v", res)
	}
}

// Revoke says which ids the result backend does not know, and still stores
// and publishes them; a controller without a result backend knows nothing
// and calls nothing unknown.
func testRevokeReportsUnknownIDs(t *testing.T, h Harness) {
	d := open(t, h)
	stem.Register(d.reg, "later", func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }, stem.TaskOptions{})
	d.startWorker(stem.WorkerConfig{ID: "w1"})
	known := d.enqueue("later", stem.EnqueueOptions{Countdown: time.Hour})
	ctx := context.Background()
	res, err := d.ctl.Revoke(ctx, target("w1"), stem.RevokeOptions{TaskIDs: []string{known, "mistyped"}})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Checked || !slices.Equal(res.Unknown, []string{"mistyped"}) || res.MarkErr != nil {
		t.Errorf("checked %v, unknown %v, mark error %v; want checked, [mistyped], none", res.Checked, res.Unknown, res.MarkErr)
	}
	var rr stemtype.RevokeReply
	if len(res.Replies.Replies) != 1 || json.Unmarshal(res.Replies.Replies[0].Payload, &rr) != nil ||
		!slices.Contains(rr.Tasks, "mistyped") || len(res.Records) != 2 {
		t.Errorf("the unknown id was not published: %+v", res.Replies)
	}
	if recs, err := d.roles.Revokes.List(ctx, d.ns); err != nil ||
		!slices.ContainsFunc(recs, func(r stemtype.RevokeRecord) bool { return r.TaskID == "mistyped" }) {
		t.Errorf("the unknown id was not stored: %v %v", recs, err)
	}

	// Without a result backend nothing is known, and nothing is called
	// unknown.
	c, err := stem.NewController(stem.ControllerConfig{Namespace: d.ns, Control: d.roles.Control, Revokes: d.roles.Revokes,
		Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	res, err = c.Revoke(ctx, target("w1"), stem.RevokeOptions{TaskIDs: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Checked || res.Unknown != nil {
		t.Errorf("without a result backend: checked %v, unknown %v", res.Checked, res.Unknown)
	}
}

// A revoke expires after the controller's DefaultExpiry, or
// stem.DefaultRevokeExpiry when it sets none.
func testControllerDefaultExpiry(t *testing.T, h Harness) {
	d := open(t, h)
	c, err := stem.NewController(stem.ControllerConfig{Namespace: d.ns, Control: d.roles.Control, Revokes: d.roles.Revokes,
		DefaultExpiry: time.Hour, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	res, err := c.Revoke(ctx, target(), stem.RevokeOptions{TaskIDs: []string{"x"}})
	if err != nil || len(res.Records) != 1 {
		t.Fatalf("revoke: %+v %v", res, err)
	}
	if d := res.Records[0].ExpiresAt.Sub(res.Records[0].IssuedAt); d != time.Hour {
		t.Fatalf("expiry %s, want the configured 1h", d)
	}
	res, err = d.ctl.Revoke(ctx, target(), stem.RevokeOptions{TaskIDs: []string{"y"}})
	if err != nil || len(res.Records) != 1 {
		t.Fatalf("revoke: %+v %v", res, err)
	}
	if d := res.Records[0].ExpiresAt.Sub(res.Records[0].IssuedAt); d != stem.DefaultRevokeExpiry {
		t.Fatalf("expiry %s, want DefaultRevokeExpiry", d)
	}
}
