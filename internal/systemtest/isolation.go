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
		stem.Register(d.reg, "probe", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
			ran <- d.ns + "/" + tc.TaskID()
			return d.ns, nil
		}, stem.TaskOptions{})
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
	if _, err := a.ctl.Revoke(ctx, target(), stem.RevokeOptions{TaskIDs: []string{shared}, Reason: "only in a"}); err != nil {
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
		i, err := c.d.ctl.Inspect(ctx, target(), stemtype.InspectRequest{IncludeRevoked: true})
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

// Two deployments with the same namespace and worker id in two scopes of
// one backend (two databases of one Redis server) never cross: a revoke
// issued in one is neither applied by the other's worker nor stored in
// its revoke store, a task of the revoked id runs in the other, and each
// broadcast ping is answered by its own worker only.
func testScopeIsolation(t *testing.T, h Harness) {
	if h.OpenElsewhere == nil {
		t.Skip("systemtest: the backend declares no second scope (Harness.OpenElsewhere)")
	}
	a := open(t, h)
	b := openWith(t, h.OpenElsewhere, a.ns)
	ran := make(chan string, 4)
	for _, d := range []*deployment{a, b} {
		stem.Register(d.reg, "probe", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
			ran <- tc.TaskID()
			return "ran", nil
		}, stem.TaskOptions{})
		d.startWorker(stem.WorkerConfig{ID: "w1"})
	}
	ctx := context.Background()
	shared := stem.NewTaskID()
	if _, err := a.ctl.Revoke(ctx, target(), stem.RevokeOptions{TaskIDs: []string{shared}, Reason: "only in a"}); err != nil {
		t.Fatal(err)
	}
	// Each worker handles its commands in order: a revoke that reached it
	// before this inspect shows in the reply.
	for _, c := range []struct {
		d    *deployment
		want int
	}{{a, 1}, {b, 0}} {
		i, err := c.d.ctl.Inspect(ctx, target("w1"), stemtype.InspectRequest{IncludeRevoked: true})
		if err != nil {
			t.Fatal(err)
		}
		var ir stemtype.InspectReply
		if len(i.Replies) != 1 || json.Unmarshal(i.Replies[0].Payload, &ir) != nil ||
			len(ir.Revoked) != c.want || ir.RevokedTotal != c.want {
			t.Fatalf("inspect of w1 in the %s scope: %+v (%+v), want %d revoke(s) held", scopeName(c.d == a), i, ir, c.want)
		}
		recs, err := c.d.roles.Revokes.List(ctx, c.d.ns)
		if err != nil || len(recs) != c.want {
			t.Fatalf("revoke store of the %s scope: %+v %v, want %d record(s)", scopeName(c.d == a), recs, err, c.want)
		}
	}
	if _, err := b.client.Enqueue(ctx, "probe", nil, stem.EnqueueOptions{ID: shared}); err != nil {
		t.Fatal(err)
	}
	if res := b.wait(shared); res.State != stemtype.StateSucceeded || string(res.Result) != `"ran"` {
		t.Fatalf("task %s of the other scope, revoked in the first only: %+v", shared, res)
	}
	if got := <-ran; got != shared {
		t.Fatalf("ran %s, want %s", got, shared)
	}
	if r, err := a.roles.Results.Get(ctx, shared); err == nil {
		t.Fatalf("the first scope's result backend holds the other's task: %+v", r)
	}
	for _, d := range []*deployment{a, b} {
		r, err := d.ctl.Ping(ctx, target())
		if err != nil || len(r.Replies) != 1 || !slices.Equal(r.Live, []string{"w1"}) || len(r.Missing) != 0 {
			t.Fatalf("broadcast ping in the %s scope: %+v (%v), want one reply, from its w1", scopeName(d == a), r, err)
		}
	}
	noneOf(t, ran, "after every task was accounted for")
}

func scopeName(first bool) string {
	if first {
		return "first"
	}
	return "other"
}
