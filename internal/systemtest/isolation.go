package systemtest

import (
	"context"
	"encoding/json"
	"slices"
	"testing"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// Two namespaces on one backend share nothing: worker ids, tasks, revokes
// and broadcasts of one never reach the other.
func testNamespaceIsolation(t *testing.T, h Harness) {
	a, b := open(t, h), open(t, h)
	ran := make(chan string, 8) // "<namespace>/<task id>"
	for _, d := range []*deployment{a, b} {
		d.reg.MustAdd(stem.Task{Name: "probe", Run: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
			ran <- d.ns + "/" + tc.TaskID()
			return d.ns, nil
		}})
		// The same worker id in both: a live id of one namespace does not
		// stop a worker of the other from starting.
		d.startWorker(stem.WorkerConfig{ID: "w"})
	}
	ctx := context.Background()
	for _, d := range []*deployment{a, b} {
		id := d.enqueue("probe", stem.EnqueueOptions{})
		if res := d.wait(id); res.State != stemtype.StateSucceeded || string(res.Result) != `"`+d.ns+`"` {
			t.Fatalf("task of %s: %+v", d.ns, res)
		}
		if got := <-ran; got != d.ns+"/"+id {
			t.Fatalf("task %s of %s ran as %s", id, d.ns, got)
		}
		s, err := d.ctl.Stats(ctx, target())
		if err != nil {
			t.Fatal(err)
		}
		var st stemtype.StatsReply
		if len(s.Replies) != 1 || json.Unmarshal(s.Replies[0].Payload, &st) != nil || st.Namespace != d.ns ||
			!slices.Equal(s.Live, []string{"w"}) {
			t.Fatalf("broadcast stats in %s: %+v (%+v)", d.ns, s, st)
		}
	}
	// A revoke in a of an id that b then uses: b's task runs.
	shared := stem.NewTaskID()
	if _, err := a.ctl.RevokeTasks(ctx, target(), stem.RevokeOptions{TaskIDs: []string{shared}, Reason: "only in a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.client.Enqueue(ctx, "probe", nil, stem.EnqueueOptions{ID: shared}); err != nil {
		t.Fatal(err)
	}
	if res := b.wait(shared); res.State != stemtype.StateSucceeded {
		t.Fatalf("task %s of %s, revoked in %s only: %+v", shared, b.ns, a.ns, res)
	}
	if got := <-ran; got != b.ns+"/"+shared {
		t.Fatalf("ran %s, want %s/%s", got, b.ns, shared)
	}
	if r, err := a.roles.Results.Get(ctx, shared); err == nil {
		t.Fatalf("a's result backend holds b's task: %+v", r)
	}
	for _, c := range []struct {
		d    *deployment
		want int
	}{{a, 1}, {b, 0}} {
		recs, err := c.d.roles.Revokes.List(ctx, c.d.ns)
		if err != nil || len(recs) != c.want {
			t.Fatalf("revoke store of %s: %+v %v, want %d record(s)", c.d.ns, recs, err, c.want)
		}
		i, err := c.d.ctl.InspectWith(ctx, target(), stemtype.InspectRequest{IncludeRevoked: true})
		if err != nil {
			t.Fatal(err)
		}
		var ir stemtype.InspectReply
		if len(i.Replies) != 1 || json.Unmarshal(i.Replies[0].Payload, &ir) != nil || ir.RevokedTotal != c.want {
			t.Fatalf("inspect in %s: %+v (%+v), want %d revoke(s) held", c.d.ns, i, ir, c.want)
		}
	}
	noneOf(t, ran, "after every task was accounted for")
}
