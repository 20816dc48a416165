package stempostgres_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
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
	u, ctx, admin, tasks := migratedTasks(t)
	claim := strings.NewReplacer("$4", "60000000", "$5", "'plan-token'").Replace(stempostgres.ClaimSQLForTest(schemaOf(t, u)))
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
		plan := explain(t, ctx, admin, "claim", claim, "plan", "q", 100)
		var doc any
		if err := json.Unmarshal(plan, &doc); err != nil {
			t.Fatal(err)
		}
		s := string(plan)
		if strings.Contains(s, `"Seq Scan"`) || !strings.Contains(s, `"stem_tasks_ready"`) || !strings.Contains(s, `"stem_tasks_pkey"`) {
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

// The statements that settle held rows find them by primary key whatever
// the table's statistics say. On a table whose statistics predate its rows
// (a new deployment's first burst into a table that another one filled), the
// planner took the claim index's namespace (and queue) prefix for a
// selective condition and scanned every row of the namespace for each
// ack: a 150,000-task drain fell from 24k to 6k tasks a second, each ack
// reading about 5,600 buffers.
func TestSettlePlansUsePrimaryKey(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	tasks := table(t, u, "stem_tasks")
	admin := planDB(t, ctx, u,
		"ALTER TABLE "+tasks+" SET (autovacuum_enabled = false)",
		// Statistics that know another namespace only, as after a
		// deployment's first burst into a table another one filled.
		"INSERT INTO "+tasks+` (namespace, queue, visible_at, due_at, task_id, payload)
			SELECT 'other', 'q', now(), now(), 'o' || g, '{}'::bytea FROM generate_series(1, 1000) g`,
		"ANALYZE "+tasks,
		"DELETE FROM "+tasks,
		"INSERT INTO "+tasks+` (namespace, queue, visible_at, due_at, task_id, payload, leased, claims)
			SELECT 'plan', 'q', now(), now(), 't' || g, '{}'::bytea, true, 1 FROM generate_series(1, 50000) g`)
	ids := []int64{10, 20, 30}
	claims := []int32{1, 1, 1}
	queues := []string{"q", "q", "q"}
	args := map[string][]any{
		"extend":     {"plan", "q", int64(10), int32(1), int64(60_000_000)},
		"ack":        {"plan", queues, ids, claims},
		"release":    {"plan", queues, ids, claims, ""},
		"retry":      {"plan", "q", int64(10), int32(1), "q", int32(0), time.Now(), "t10", []byte("{}"), ""},
		"deadLetter": {"plan", "q", int64(10), int32(1), "why"},
	}
	for name, stmt := range stempostgres.SettleSQLForTest(schemaOf(t, u)) {
		plan := explain(t, ctx, admin, name, stmt, args[name]...)
		if s := string(plan); strings.Contains(s, `"stem_tasks_ready"`) || strings.Contains(s, `"Seq Scan"`) || !strings.Contains(s, `"stem_tasks_pkey"`) {
			t.Errorf("%s does not find its rows by primary key alone on stale statistics:\n%s", name, plan)
		}
	}
}

// Results read by id are found by (namespace, id) whatever the table's
// statistics say. On statistics that knew other namespaces only, the
// planner scanned the new namespace's whole primary key range for one
// read of 1,000 ids (about 160,000 buffers, 115 ms, with 150,000 results
// in the namespace) rather than descend once per id.
func TestGetPlansDescendPerID(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	results := table(t, u, "stem_results")
	admin := planDB(t, ctx, u,
		"ALTER TABLE "+results+" SET (autovacuum_enabled = false)",
		"INSERT INTO "+results+` (namespace, id, state, body) SELECT 'other', 'o' || g, 'succeeded', '{}' FROM generate_series(1, 1000) g`,
		"ANALYZE "+results,
		"DELETE FROM "+results,
		"INSERT INTO "+results+` (namespace, id, state, body) SELECT 'plan', 't' || g, 'succeeded', '{}' FROM generate_series(1, 50000) g`)
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = "t" + strconv.Itoa(i*50+1)
	}
	for name, stmt := range stempostgres.GetSQLForTest(schemaOf(t, u)) {
		plan := explain(t, ctx, admin, name, stmt, "plan", ids)
		var doc []struct{ Plan planNode }
		if err := json.Unmarshal(plan, &doc); err != nil || len(doc) != 1 {
			t.Fatalf("%s: plan %s: %v", name, plan, err)
		}
		var scans []planNode
		doc[0].Plan.walk(func(n planNode) {
			if n.RelationName == "stem_results" {
				scans = append(scans, n)
			}
		})
		for _, n := range scans {
			if n.IndexName != "stem_results_pkey" || !strings.Contains(n.IndexCond, "namespace") || !strings.Contains(n.IndexCond, "id") {
				t.Errorf("%s reads stem_results with %s on %q (index condition %q), want a descent of the primary key by namespace and id:\n%s",
					name, n.NodeType, n.IndexName, n.IndexCond, plan)
			}
		}
		if len(scans) == 0 {
			t.Errorf("%s: no scan of stem_results in the plan:\n%s", name, plan)
		}
	}
}

// planNode is a node of EXPLAIN (FORMAT JSON).
type planNode struct {
	NodeType     string     `json:"Node Type"`
	RelationName string     `json:"Relation Name"`
	IndexName    string     `json:"Index Name"`
	IndexCond    string     `json:"Index Cond"`
	Plans        []planNode `json:"Plans"`
}

func (n planNode) walk(f func(planNode)) {
	f(n)
	for _, c := range n.Plans {
		c.walk(f)
	}
}

// planDB migrates the schema of u and returns an admin connection after
// running stmts (the table's setup) on it.
func planDB(t *testing.T, ctx context.Context, u string, stmts ...string) *pgx.Conn {
	t.Helper()
	if err := stempostgres.Migrate(ctx, u); err != nil {
		t.Fatal(err)
	}
	admin := adminConn(t)
	for _, stmt := range stmts {
		if _, err := admin.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	return admin
}

// explain returns the JSON plan of stmt with args, planned in a
// transaction that is rolled back (EXPLAIN of a write does not run it).
func explain(t *testing.T, ctx context.Context, admin *pgx.Conn, what, stmt string, args ...any) []byte {
	t.Helper()
	tx, err := admin.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var plan []byte
	if err := tx.QueryRow(ctx, "EXPLAIN (FORMAT JSON) "+stmt, args...).Scan(&plan); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return plan
}

// A claim from a cursor (where the last claim ended) still finds what
// becomes ready behind it: a row of a higher priority at once, and a row
// placed before the cursor (a lease that expired, a delayed message due
// earlier) as soon as a claim from the cursor finds nothing. And the
// claim from a cursor starts its scan at the cursor.
func TestClaimCursor(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	r := roles(t, u, "cur")
	b := r.Broker
	claim := func(max int) []string {
		t.Helper()
		ds, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: max, Lease: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, d := range ds {
			ids = append(ids, d.Envelope.ID)
		}
		return ids
	}
	if err := b.Publish(ctx, envelope("a1", "q"), envelope("a2", "q"), envelope("a3", "q")); err != nil {
		t.Fatal(err)
	}
	if got := claim(1); !slices.Equal(got, []string{"a1"}) {
		t.Fatalf("first claim = %v, want [a1]", got)
	}
	// Behind the cursor: a row whose visible_at is before a1's.
	raw, err := json.Marshal(envelope("behind", "q"))
	if err != nil {
		t.Fatal(err)
	}
	admin := adminConn(t)
	if _, err := admin.Exec(ctx, "INSERT INTO "+table(t, u, "stem_tasks")+` (namespace, queue, visible_at, due_at, task_id, payload)
		VALUES ('cur', 'q', now() - interval '1 hour', now() - interval '1 hour', 'behind', $1)`, raw); err != nil {
		t.Fatal(err)
	}
	high := envelope("high", "q")
	high.Priority = 5
	if err := b.Publish(ctx, high); err != nil {
		t.Fatal(err)
	}
	if got := claim(2); !slices.Equal(got, []string{"high", "a2"}) {
		t.Fatalf("claim from the cursor = %v, want [high a2] (the higher priority first, then after the cursor)", got)
	}
	if got := claim(5); !slices.Equal(got, []string{"a3"}) {
		t.Fatalf("claim from the cursor = %v, want [a3]", got)
	}
	if got := claim(5); !slices.Equal(got, []string{"behind"}) {
		t.Fatalf("claim once nothing is after the cursor = %v, want [behind] (from the head)", got)
	}
	plan := explain(t, ctx, admin, "claim after", stempostgres.ClaimAfterSQLForTest(schemaOf(t, u)),
		"cur", "q", 10, int64(60_000_000), "explain", int32(0), time.Now(), int64(1))
	if !strings.Contains(string(plan), "ROW(due_at, id) >") {
		t.Errorf("the claim from a cursor does not start its index scan at the cursor:\n%s", plan)
	}
}

// A row behind the cursor is claimed even while every claim from the
// cursor finds rows (a steady flow): claims start from the head of the
// queue again once the cursor is a second old.
func TestClaimCursorRenewedUnderFlow(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	r := roles(t, u, "flow")
	b := r.Broker
	if err := b.Publish(ctx, envelope("first", "q")); err != nil {
		t.Fatal(err)
	}
	claimOne := func() []stemdriver.Delivery {
		t.Helper()
		ds, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 1, Lease: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		return ds
	}
	if ds := claimOne(); len(ds) != 1 || ds[0].Envelope.ID != "first" {
		t.Fatalf("first claim = %v", ds)
	}
	raw, err := json.Marshal(envelope("behind", "q"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adminConn(t).Exec(ctx, "INSERT INTO "+table(t, u, "stem_tasks")+` (namespace, queue, visible_at, due_at, task_id, payload)
		VALUES ('flow', 'q', now() - interval '1 hour', now() - interval '1 hour', 'behind', $1)`, raw); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		// A new row before each claim: a claim from the cursor always finds one.
		if err := b.Publish(ctx, envelope(fmt.Sprintf("flow-%d", i), "q")); err != nil {
			t.Fatal(err)
		}
		ds := claimOne()
		if len(ds) == 1 && ds[0].Envelope.ID == "behind" {
			return
		}
		if ctx.Err() != nil {
			t.Fatal("the row behind the cursor was never claimed while claims from the cursor found rows")
		}
	}
}

// A claim writes no index entry: its UPDATE changes the lease columns
// only, none of them in an index, and the table leaves room on each page
// for the claimed versions, so every row it takes is updated heap-only
// (HOT), a whole page of rows at once included.
func TestClaimIsHeapOnlyUpdate(t *testing.T) {
	u, ctx, admin, tasks := migratedTasks(t)
	if _, err := admin.Exec(ctx, "INSERT INTO "+tasks+` (namespace, queue, visible_at, due_at, task_id, payload)
		SELECT 'hot', 'q', now(), now(), 't' || g, convert_to(repeat('x', 200), 'UTF8') FROM generate_series(1, 500) g`); err != nil {
		t.Fatal(err)
	}
	tx, err := admin.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	tag, err := tx.Exec(ctx, stempostgres.ClaimSQLForTest(schemaOf(t, u)), "hot", "q", 200, int64(60_000_000), "hot-token")
	if err != nil {
		t.Fatal(err)
	}
	var hot, updated int64
	if err := tx.QueryRow(ctx, "SELECT pg_stat_get_xact_tuples_hot_updated($1::regclass), pg_stat_get_xact_tuples_updated($1::regclass)", tasks).Scan(&hot, &updated); err != nil {
		t.Fatal(err)
	}
	if tag.RowsAffected() != 200 || updated != 200 || hot != updated {
		t.Fatalf("claim of 200 rows: %d claimed, %d updated, %d of them heap-only; want all 200 heap-only", tag.RowsAffected(), updated, hot)
	}
}

// migratedTasks returns a migrated schema of the test's own, a bounded
// context, an admin connection and the schema's stem_tasks, for tests
// that write rows and run statements behind the driver's back.
func migratedTasks(t *testing.T) (u string, ctx context.Context, admin *pgx.Conn, tasks string) {
	t.Helper()
	u = testutil.PostgresSchema(t)
	ctx = boundCtx(t)
	if err := stempostgres.Migrate(ctx, u); err != nil {
		t.Fatal(err)
	}
	return u, ctx, adminConn(t), table(t, u, "stem_tasks")
}
