package stempostgres_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stempostgres"
	"github.com/stem-go/stem/stemtype"
)

// table returns the quoted name of a stem table in the schema of u.
func table(t *testing.T, u, name string) string {
	return pgx.Identifier{schemaOf(t, u), name}.Sanitize()
}

// A row that does not decode as an envelope (a foreign or broken producer
// wrote it) is dead-lettered by a worker with the reason and its raw bytes,
// and recorded as a failure of the task it names; the worker keeps working.
func TestUndecodableRowIsDeadLettered(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	ns := "undecodable"
	r := roles(t, u, ns)
	admin := adminConn(t)
	bad := `{"id":"bad-1","task":"echo","queue":"default","attempt":"zero"}`
	if _, err := admin.Exec(ctx, "INSERT INTO "+table(t, u, "stem_tasks")+" (namespace, queue, visible_at, due_at, task_id, payload) VALUES ($1, 'default', now(), now(), 'bad-1', $2)",
		ns, []byte(bad)); err != nil {
		t.Fatal(err)
	}
	reg := stem.NewRegistry()
	stem.Register(reg, "echo", func(*stem.TaskContext, stem.Args) (any, error) { return "ok", nil }, stem.TaskOptions{})
	systemtest.RunWorker(t, systemtest.NewWorker(t, ns, reg, r, stem.WorkerConfig{}))
	client, err := stem.NewClient(stem.ClientConfig{Broker: r.Broker, Results: r.Results, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	got, err := client.Wait(ctx, "bad-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != stemtype.StateFailed || got.Error == nil || got.Error.Kind != "decode" {
		t.Fatalf("undecodable task recorded as %+v (%+v)", got, got.Error)
	}
	// The result is written before the dead letter: a later task's result
	// means the worker went on, and then the dead letter is there.
	id, err := client.Enqueue(ctx, "echo", nil, stem.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := client.Wait(ctx, id); err != nil || res.State != stemtype.StateSucceeded {
		t.Fatalf("after the dead letter: %+v %v", res, err)
	}
	var payload []byte
	var reason string
	for {
		err := admin.QueryRow(ctx, "SELECT payload, reason FROM "+table(t, u, "stem_dead_letters")+" WHERE namespace = $1 AND task_id = 'bad-1'", ns).Scan(&payload, &reason)
		if err == nil {
			break
		}
		if !errors.Is(err, pgx.ErrNoRows) || ctx.Err() != nil {
			t.Fatalf("no dead letter: %v", err)
		}
	}
	if string(payload) != bad || !strings.Contains(reason, "undecodable") {
		t.Fatalf("dead letter %q with reason %q, want the raw message and a reason saying undecodable", payload, reason)
	}
	if d, err := r.Broker.Depth(ctx, "default"); err != nil || d != 0 {
		t.Fatalf("depth %d, %v; want 0", d, err)
	}
}

// Acknowledged tasks leave the table, so it holds only unfinished work.
func TestAckDeletesRows(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	r := roles(t, u, "ack")
	var envs []*stemtype.Envelope
	for _, id := range []string{"a", "b", "c"} {
		envs = append(envs, envelope(id, "q"))
	}
	if err := r.Broker.Publish(ctx, envs...); err != nil {
		t.Fatal(err)
	}
	ds, err := r.Broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 10, Lease: time.Minute})
	if err != nil || len(ds) != 3 {
		t.Fatalf("claimed %d, %v; want 3", len(ds), err)
	}
	if err := r.Broker.Ack(ctx, ds...); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := adminConn(t).QueryRow(ctx, "SELECT count(*) FROM "+table(t, u, "stem_tasks")).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d rows left in stem_tasks after acknowledging every task", n)
	}
	if err := r.Broker.Publish(ctx, &stemtype.Envelope{ID: "p", Task: "t", Queue: "q", Priority: 1 << 40}); err == nil {
		t.Fatal("a priority past 32 bits was accepted")
	}
}

// Results expire after the URL's result_ttl (by the server's clock), and
// Prune deletes them.
func TestResultRetention(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	res := opened[*stempostgres.Results](t)(stempostgres.OpenResults(ctx, u+"&result_ttl=50ms", stemdriver.Options{Namespace: "ttl", Logger: quiet()}))
	keep := opened[*stempostgres.Results](t)(stempostgres.OpenResults(ctx, u+"&result_ttl=0", stemdriver.Options{Namespace: "ttl", Logger: quiet()}))
	now := time.Now().UTC()
	if err := res.Put(ctx, &stemtype.TaskResult{ID: "short", Task: "t", State: stemtype.StateSucceeded, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := keep.Put(ctx, &stemtype.TaskResult{ID: "forever", Task: "t", State: stemtype.StateSucceeded, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	// Only the expiry's state can be polled; the deadline is a failure bound.
	for {
		_, err := res.Get(ctx, "short")
		if errors.Is(err, stemdriver.ErrNotFound) {
			break
		}
		if err != nil || ctx.Err() != nil {
			t.Fatalf("result never expired: %v", err)
		}
	}
	n, err := res.Prune(ctx)
	if err != nil || n < 1 {
		t.Fatalf("Prune = %d, %v; want the expired result deleted", n, err)
	}
	var left int
	if err := adminConn(t).QueryRow(ctx, "SELECT count(*) FROM "+table(t, u, "stem_results")+" WHERE id = 'short'").Scan(&left); err != nil || left != 0 {
		t.Fatalf("expired row still stored (%d, %v)", left, err)
	}
	if got, err := keep.Get(ctx, "forever"); err != nil || got.State != stemtype.StateSucceeded {
		t.Fatalf("result kept forever: %+v, %v", got, err)
	}
}

// The claim statement uses the claim index at every table size, not a
// sequential scan (the IN (subquery) trap of PERFORMANCE.md).
func TestClaimPlanUsesIndex(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	if err := stempostgres.Migrate(ctx, u); err != nil {
		t.Fatal(err)
	}
	admin := adminConn(t)
	tasks := table(t, u, "stem_tasks")
	claim := strings.ReplaceAll(stempostgres.ClaimSQLForTest(schemaOf(t, u)), "$4", "60000000")
	for _, rows := range []int{1000, 50000} {
		if _, err := admin.Exec(ctx, "TRUNCATE "+tasks); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Exec(ctx, "INSERT INTO "+tasks+` (namespace, queue, visible_at, due_at, task_id, payload)
			SELECT 'plan', 'q', now(), now(), 't' || g, '{}'::bytea FROM generate_series(1, $1) g`, rows); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Exec(ctx, "ANALYZE "+tasks); err != nil {
			t.Fatal(err)
		}
		tx, err := admin.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var plan []byte
		err = tx.QueryRow(ctx, "EXPLAIN (FORMAT JSON) "+claim, "plan", "q", 100).Scan(&plan)
		_ = tx.Rollback(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var doc any
		if err := json.Unmarshal(plan, &doc); err != nil {
			t.Fatal(err)
		}
		s := string(plan)
		if strings.Contains(s, `"Seq Scan"`) || !strings.Contains(s, `"stem_tasks_claim"`) || !strings.Contains(s, `"stem_tasks_pkey"`) {
			t.Errorf("claim plan at %d rows does not use the claim and primary key indexes:\n%s", rows, plan)
		}
	}
}

// A message whose notification never comes (written behind the driver's
// back, as when a publisher dies between its commit and its NOTIFY) still
// reaches a Claim that is waiting: idle Claims poll.
func TestClaimFindsUnnotifiedMessage(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	r := roles(t, u, "poll")
	admin := adminConn(t)
	got := make(chan []stemdriver.Delivery, 1)
	errc := make(chan error, 1)
	go func() {
		ds, err := r.Broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 1, Lease: time.Minute, Wait: 20 * time.Second})
		errc <- err
		got <- ds
	}()
	raw, err := json.Marshal(envelope("silent", "q"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "INSERT INTO "+table(t, u, "stem_tasks")+" (namespace, queue, visible_at, due_at, task_id, payload) VALUES ('poll', 'q', now(), now(), 'silent', $1)", raw); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if ds := <-got; len(ds) != 1 || ds[0].Envelope == nil || ds[0].Envelope.ID != "silent" {
		t.Fatalf("waiting Claim returned %+v, want the unnotified message", ds)
	}
}
