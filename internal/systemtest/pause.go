package systemtest

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// pauseReply decodes the one reply of a pause or resume.
func pauseReply(t *testing.T, r *stem.Replies, worker string) stemtype.QueuePauseReply {
	t.Helper()
	reps := stem.Decode[stemtype.QueuePauseReply](r)
	if len(reps) != 1 || reps[0].Err != nil || reps[0].WorkerID != worker {
		t.Fatalf("replies %+v, want one good reply of %s", reps, worker)
	}
	return reps[0].Payload
}

// A paused queue's tasks stay queued: a worker that answered the pause
// starts none of them, while it runs the tasks of its other queues; a
// worker started after the pause honours it (it loads the record from the
// store); once resumed, the queued task runs, once.
func testQueuePauseAndResume(t *testing.T, h Harness) {
	d := open(t, h)
	var runs atomic.Int32
	stem.Register(d.reg, "work", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		if tc.Queue() == "mail" {
			runs.Add(1)
		}
		return nil, nil
	}, stem.TaskOptions{})
	queues := []string{"mail", stemtype.DefaultQueue}
	_, stop := d.startWorker(stem.WorkerConfig{ID: "w1", Queues: queues})
	res, err := d.ctl.PauseQueue(context.Background(), target("w1"), stem.QueuePauseOptions{Queue: "mail", RequestedBy: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Record.Kind != stemtype.RevokeKindQueuePause || res.Record.Queue != "mail" || res.Record.Resumed {
		t.Fatalf("stored record %+v, want a pause of mail", res.Record)
	}
	if p := pauseReply(t, res.Replies, "w1"); !p.Paused || !p.Consumes || !slices.Equal(p.PausedQueues, []string{"mail"}) {
		t.Fatalf("pause reply %+v", p)
	}
	held := d.enqueue("work", stem.EnqueueOptions{Queue: "mail"})
	if r := d.wait(d.enqueue("work", stem.EnqueueOptions{})); r.State != stemtype.StateSucceeded {
		t.Fatalf("a task of an unpaused queue: %+v", r)
	}
	d.waitDepth("mail", 1)
	st, err := d.ctl.Stats(context.Background(), target("w1"))
	if err != nil {
		t.Fatal(err)
	}
	if reps := stem.Decode[stemtype.StatsReply](st); len(reps) != 1 || !slices.Equal(reps[0].Payload.Paused, []string{"mail"}) {
		t.Fatalf("stats %+v, want mail paused", reps)
	}
	stop()

	_, stop = d.startWorker(stem.WorkerConfig{ID: "late", Queues: queues})
	if r := d.wait(d.enqueue("work", stem.EnqueueOptions{})); r.State != stemtype.StateSucceeded {
		t.Fatalf("a task of an unpaused queue on the later worker: %+v", r)
	}
	if r, err := d.roles.Results.Get(context.Background(), held); err != nil || r.State != stemtype.StatePending {
		t.Fatalf("the paused queue's task: %+v, %v; want pending", r, err)
	}
	d.waitDepth("mail", 1)
	if n := runs.Load(); n != 0 {
		t.Fatalf("a task of the paused queue ran %d time(s)", n)
	}
	res, err = d.ctl.ResumeQueue(context.Background(), target("late"), stem.QueuePauseOptions{Queue: "mail"})
	if err != nil {
		t.Fatal(err)
	}
	if p := pauseReply(t, res.Replies, "late"); p.Paused || len(p.PausedQueues) != 0 || !res.Record.Resumed {
		t.Fatalf("resume reply %+v, record %+v", p, res.Record)
	}
	if r := d.wait(held); r.State != stemtype.StateSucceeded {
		t.Fatalf("the paused queue's task after the resume: %+v", r)
	}
	stop()
	if n := runs.Load(); n != 1 {
		t.Fatalf("the paused queue's task ran %d time(s), want 1", n)
	}
}

// A worker that did not get the pause command (it was not targeted, as if
// it missed the message) learns of the pause, and then of the resume, from
// its periodic re-sync of the revoke store.
func testQueuePauseReachesWorkerByResync(t *testing.T, h Harness) {
	d := open(t, h)
	stem.Register(d.reg, "work", func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }, stem.TaskOptions{})
	queues := []string{"mail", stemtype.DefaultQueue}
	_, stop1 := d.startWorker(stem.WorkerConfig{ID: "told", Queues: queues})
	_, stop2 := d.startWorker(stem.WorkerConfig{ID: "missed", Queues: queues, RevokeSyncInterval: 20 * time.Millisecond})
	pausedOn := func(worker string) []string {
		st, err := d.ctl.Stats(context.Background(), target(worker))
		if err != nil {
			t.Fatal(err)
		}
		reps := stem.Decode[stemtype.StatsReply](st)
		if len(reps) != 1 || reps[0].Err != nil {
			t.Fatalf("stats of %s: %+v", worker, reps)
		}
		return reps[0].Payload.Paused
	}
	if _, err := d.ctl.PauseQueue(context.Background(), target("told"), stem.QueuePauseOptions{Queue: "mail"}); err != nil {
		t.Fatal(err)
	}
	d.waitFor("the untold worker re-syncs the pause", func(context.Context) bool {
		return slices.Equal(pausedOn("missed"), []string{"mail"})
	})
	held := d.enqueue("work", stem.EnqueueOptions{Queue: "mail"})
	for range 4 {
		if r := d.wait(d.enqueue("work", stem.EnqueueOptions{})); r.State != stemtype.StateSucceeded {
			t.Fatalf("a task of an unpaused queue: %+v", r)
		}
	}
	if r, err := d.roles.Results.Get(context.Background(), held); err != nil || r.State != stemtype.StatePending {
		t.Fatalf("the paused queue's task: %+v, %v; want pending", r, err)
	}
	stop1() // only the untold worker is left to run it once it re-syncs the resume
	res, err := d.ctl.ResumeQueue(context.Background(), target("told"), stem.QueuePauseOptions{Queue: "mail"})
	if err != nil || len(res.Replies.Replies) != 0 || !slices.Contains(res.Replies.NotLive, "told") {
		t.Fatalf("resume aimed at a stopped worker: %+v, %v; want it stored and the worker reported not live", res, err)
	}
	if r := d.wait(held); r.State != stemtype.StateSucceeded || r.WorkerID != "missed" {
		t.Fatalf("the paused queue's task after the resume: %+v, want succeeded on the untold worker", r)
	}
	stop2()
}

// gatedClaim holds the first Claim made once it is armed until open is
// closed, after sending its queues on entered.
type gatedClaim struct {
	stemdriver.Broker
	armed   atomic.Bool
	entered chan []string
	open    chan struct{}
}

func (b *gatedClaim) Claim(ctx context.Context, req stemdriver.ClaimRequest) ([]stemdriver.Delivery, error) {
	if b.armed.CompareAndSwap(true, false) {
		b.entered <- req.Queues
		select {
		case <-b.open:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return b.Broker.Claim(ctx, req)
}

// A claim that was under way when the pause arrived, and so still names
// the paused queue, brings a task of that queue: the worker hands it back
// at once instead of starting it, since it had answered the pause.
func testClaimUnderWayAtPauseStartsNothing(t *testing.T, h Harness) {
	d := open(t, h)
	var runs atomic.Int32
	stem.Register(d.reg, "work", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		if tc.Queue() == "mail" {
			runs.Add(1)
		}
		return nil, nil
	}, stem.TaskOptions{})
	gb := &gatedClaim{Broker: d.roles.Broker, entered: make(chan []string, 1), open: make(chan struct{})}
	_, stop := d.startWorker(stem.WorkerConfig{ID: "w1", Queues: []string{"mail", stemtype.DefaultQueue}, Broker: gb})
	gb.armed.Store(true)
	if qs := await(t, gb.entered, "a claim is under way"); !slices.Contains(qs, "mail") {
		t.Fatalf("the claim names %v, want mail among them", qs)
	}
	if _, err := d.ctl.PauseQueue(context.Background(), target("w1"), stem.QueuePauseOptions{Queue: "mail"}); err != nil {
		t.Fatal(err)
	}
	held := d.enqueue("work", stem.EnqueueOptions{Queue: "mail"})
	close(gb.open)
	if r := d.wait(d.enqueue("work", stem.EnqueueOptions{})); r.State != stemtype.StateSucceeded {
		t.Fatalf("a task of an unpaused queue: %+v", r)
	}
	d.waitDepth("mail", 1)
	stop()
	if n := runs.Load(); n != 0 {
		t.Fatalf("the paused queue's task ran %d time(s)", n)
	}
	if r, err := d.roles.Results.Get(context.Background(), held); err != nil || r.State != stemtype.StatePending {
		t.Fatalf("the paused queue's task: %+v, %v; want pending", r, err)
	}
}
