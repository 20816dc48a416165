package stempostgres_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stempostgres"
	"github.com/stem-go/stem/stemtype"
)

// A terminate reaches the running task whichever way the revoke goes out:
// in the upsert's own statement, or (records that repeat a task; a command
// past the notification's 8,000 bytes) published after the upsert; and
// the workers are told the versions the store holds.
func TestRevokeTerminateEveryPath(t *testing.T) {
	u := testutil.PostgresSchema(t)
	for _, tc := range []struct {
		name  string
		extra func(id string) []string
	}{
		{"one statement", func(string) []string { return nil }},
		{"a task given twice", func(id string) []string { return []string{id} }},
		{"past the notification limit", func(string) []string {
			var ids []string
			for i := range 400 {
				ids = append(ids, fmt.Sprintf("not-a-task-%04d-%s", i, "padding-padding-padding"))
			}
			return ids
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := boundCtx(t)
			ns := "rp-" + stem.NewTaskID()[:8]
			r := roles(t, u, ns)
			reg := stem.NewRegistry()
			running := make(chan string, 1)
			stem.Register(reg, "block", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
				running <- tc.TaskID()
				<-tc.Done()
				return nil, tc.Err()
			}, stem.TaskOptions{})
			systemtest.RunWorker(t, systemtest.NewWorker(t, ns, reg, r, stem.WorkerConfig{ID: "w1"}))
			client, err := stem.NewClient(stem.ClientConfig{Broker: r.Broker, Results: r.Results, Registry: reg})
			if err != nil {
				t.Fatal(err)
			}
			id, err := client.Enqueue(ctx, "block", nil, stem.EnqueueOptions{})
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-running:
			case <-ctx.Done():
				t.Fatal("the task never started")
			}
			ctl, err := stem.NewController(stem.ControllerConfig{Namespace: ns, Control: r.Control, Revokes: r.Revokes, Results: r.Results})
			if err != nil {
				t.Fatal(err)
			}
			ids := append([]string{id}, tc.extra(id)...)
			res, err := ctl.Revoke(ctx, stem.Target{}, stem.RevokeOptions{TaskIDs: ids, Terminate: true, Reason: tc.name})
			if err != nil {
				t.Fatalf("revoke: %v", err)
			}
			if len(res.Replies.Missing) > 0 {
				t.Fatalf("revoke: no reply from %v", res.Replies.Missing)
			}
			got, err := client.Wait(ctx, id)
			if err != nil || got.State != stemtype.StateCancelled {
				t.Fatalf("task after revoke --terminate: %+v %v, want cancelled", got, err)
			}
			stored, err := r.Revokes.List(ctx, ns)
			if err != nil {
				t.Fatal(err)
			}
			var last int64
			for _, rec := range res.Records {
				if rec.TaskID == id {
					last = rec.Version
				}
			}
			for _, rec := range stored {
				if rec.TaskID == id && rec.Version != last {
					t.Fatalf("stored version %d of %s, but the workers were told %d", rec.Version, id, last)
				}
			}
		})
	}
}

// The revoke's upsert, the claim and a reply commit without waiting for
// the disk (so that a notification leaves at once, and a claim or reply
// returns sooner)
// through a setting local to their own transactions: the pool's
// connections keep synchronous commits after them, the records are
// stored when UpsertPublish returns, and the claimed rows are held.
func TestUpsertPublishKeepsSynchronousCommit(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	ns := "sc-" + stem.NewTaskID()[:8]
	r := roles(t, u, ns)
	rp, ok := r.Control.(stemdriver.RevokePublisher)
	if !ok || !rp.PublishesWith(r.Revokes) {
		t.Fatal("the Postgres control transport does not publish revokes with its revoke store")
	}
	for i := range 20 {
		rec := stemtype.RevokeRecord{Namespace: ns, TaskID: fmt.Sprintf("t%d", i), Version: int64(i + 1), IssuedAt: time.Now()}
		stored, _, err := rp.UpsertPublish(ctx, r.Revokes, []stemtype.RevokeRecord{rec}, nil, []byte(`{}`))
		if err != nil || len(stored) != 1 {
			t.Fatalf("UpsertPublish: %v, %v", stored, err)
		}
	}
	got, err := r.Revokes.List(ctx, ns)
	if err != nil || len(got) != 20 {
		t.Fatalf("List after 20 UpsertPublish calls: %d records, %v; want 20", len(got), err)
	}
	for i := range 20 {
		if err := r.Broker.Publish(ctx, &stemtype.Envelope{ID: fmt.Sprintf("c%d", i), Task: "x", Queue: "q"}); err != nil {
			t.Fatal(err)
		}
		ds, err := r.Broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 5, Lease: time.Hour})
		if err != nil || len(ds) != 1 {
			t.Fatalf("claim %d: %d deliveries, %v; want the one published", i, len(ds), err)
		}
	}
	if d, err := r.Broker.Depth(ctx, "q"); err != nil || d != 0 {
		t.Fatalf("Depth after claiming every message = %d, %v; want 0 (all held)", d, err)
	}
	// Replies commit the same way.
	for i := range 5 {
		if err := r.Control.Reply(ctx, "req", []byte(fmt.Sprintf(`{"n":%d}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	if err := r.Control.Replies(ctx, "req", func([]byte) bool { n++; return n < 5 }); err != nil || n != 5 {
		t.Fatalf("Replies: %d of 5 replies read, %v", n, err)
	}
	// Every connection the pool holds (the calls above may have used
	// several) reports the server's synchronous commit setting.
	pool := stempostgres.PoolForTest(r.Control)
	conns := pool.AcquireAllIdle(ctx)
	if len(conns) == 0 {
		t.Fatal("no idle connection in the pool")
	}
	var bad []string
	for _, c := range conns {
		var setting, reset string
		if err := c.QueryRow(ctx, "SELECT setting, reset_val FROM pg_settings WHERE name = 'synchronous_commit'").Scan(&setting, &reset); err != nil {
			bad = append(bad, err.Error())
		} else if setting != reset {
			bad = append(bad, fmt.Sprintf("synchronous_commit = %q where the server's is %q", setting, reset))
		}
	}
	for _, c := range conns {
		c.Release() // all of them before any Fatal: Close waits for them
	}
	if len(bad) > 0 {
		t.Fatalf("pooled connections after UpsertPublish and Claim: %v", bad)
	}
}
