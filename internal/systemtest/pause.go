package systemtest

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/stem-go/stem"
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
