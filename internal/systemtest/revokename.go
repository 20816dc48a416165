package systemtest

import (
	"context"
	"encoding/json"
	"slices"
	"testing"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// A revoke by task name cancels a running task of that name (with
// terminate), keeps every task of that name a worker meets from starting,
// also on a worker started after the revoke (it loads the record from the
// store), and leaves tasks of other names alone, including one whose id is
// the revoked name: revokes by name and by id never collide.
func testRevokeByName(t *testing.T, h Harness) {
	d := open(t, h)
	started := make(chan string, 1)
	stem.Register(d.reg, "loop", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		started <- tc.TaskID()
		<-tc.Done()
		return "ignored", nil
	}, stem.TaskOptions{})
	ran := make(chan string, 8)
	stem.Register(d.reg, "victim", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		ran <- tc.TaskID()
		return nil, nil
	}, stem.TaskOptions{})
	stem.Register(d.reg, "other", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		return tc.TaskID(), nil
	}, stem.TaskOptions{})
	_, stop := d.startWorker(stem.WorkerConfig{ID: "w1", Concurrency: 2})
	loop := d.enqueue("loop", stem.EnqueueOptions{})
	await(t, started, "the loop task starts")
	d.waitState(loop, stemtype.StateStarted)
	res, err := d.ctl.Revoke(context.Background(), target("w1"), stem.RevokeOptions{
		TaskNames: []string{"loop", "victim"}, Terminate: true, Reason: "bad deploy", RequestedBy: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Records) != 2 || res.Records[0].Kind != stemtype.RevokeKindName || res.Records[0].Name != "loop" ||
		res.Records[1].Name != "victim" || res.Records[1].TaskID != stemtype.NameRevokeKey("victim") {
		t.Fatalf("stored records %+v, want revokes by name of loop and victim", res.Records)
	}
	var rr stemtype.RevokeReply
	if reps := res.Replies.Replies; len(reps) != 1 || json.Unmarshal(reps[0].Payload, &rr) != nil ||
		!slices.Equal(rr.Names, []string{"loop", "victim"}) || !slices.Equal(rr.Inflight, []string{loop}) || len(rr.Tasks) != 0 {
		t.Fatalf("revoke replies %+v (payload %+v), want names loop and victim applied and the loop task signalled", res.Replies, rr)
	}
	checkRevokeMeta(t, d.wait(loop), "bad deploy", "ops")
	v1 := d.enqueue("victim", stem.EnqueueOptions{})
	// A task whose id is the revoked name is not revoked.
	named := d.enqueue("other", stem.EnqueueOptions{ID: "victim"})
	checkRevokeMeta(t, d.wait(v1), "bad deploy", "ops")
	if r := d.wait(named); r.State != stemtype.StateSucceeded {
		t.Fatalf("task with id %q (a revoked name): %+v, want succeeded", named, r)
	}
	stop()
	v2 := d.enqueue("victim", stem.EnqueueOptions{})
	_, stop = d.startWorker(stem.WorkerConfig{ID: "late", Concurrency: 1})
	marker := d.enqueue("other", stem.EnqueueOptions{})
	if r := d.wait(marker); r.State != stemtype.StateSucceeded {
		t.Fatalf("marker: %+v", r)
	}
	checkRevokeMeta(t, d.wait(v2), "bad deploy", "ops")
	stop()
	noneOf(t, ran, "revoked by name")
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("queue depth %d, want 0: tasks revoked by name are acknowledged", n)
	}
}
