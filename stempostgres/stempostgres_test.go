package stempostgres_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stempostgres"
	"github.com/stem-go/stem/stemtype"
)

// bound bounds every wait of these tests: reaching it is a failure.
const bound = 30 * time.Second

func boundCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	t.Cleanup(cancel)
	return ctx
}

// adminConn is a plain connection to the test server, for looking behind
// the driver's back.
func adminConn(t *testing.T) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), testutil.NeedPostgres(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// schemaOf returns the search_path of a test URL.
func schemaOf(t *testing.T, u string) string {
	t.Helper()
	_, q, _ := strings.Cut(u, "search_path=")
	s, _, _ := strings.Cut(q, "&")
	if s == "" {
		t.Fatalf("no search_path in %s", u)
	}
	return s
}

func envelope(id, queue string) *stemtype.Envelope {
	return &stemtype.Envelope{ID: id, Task: "t", Queue: queue, CreatedAt: time.Now()}
}

// Workers that start at once on a fresh schema migrate it once: every open
// succeeds and each version is recorded once.
func TestMigrateConcurrentFreshSchema(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() { errs <- stempostgres.Migrate(ctx, u) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Migrate: %v", err)
		}
	}
	conn := adminConn(t)
	var n, versions int
	schema := schemaOf(t, u)
	if err := conn.QueryRow(ctx, "SELECT count(*), count(DISTINCT version) FROM "+pgx.Identifier{schema, "stem_migrations"}.Sanitize()).Scan(&n, &versions); err != nil {
		t.Fatal(err)
	}
	if n != versions || n == 0 {
		t.Fatalf("stem_migrations holds %d rows for %d versions, want one row per version", n, versions)
	}
	// The roles open on the migrated schema and work.
	r := roles(t, u, "mig")
	if err := r.Broker.Publish(ctx, envelope("m1", "q")); err != nil {
		t.Fatal(err)
	}
	if d, err := r.Broker.Depth(ctx, "q"); err != nil || d != 1 {
		t.Fatalf("Depth = %d, %v; want 1", d, err)
	}
}

// SQL's output, run by hand, migrates a schema as Migrate does, and
// running it again changes nothing.
func TestSQLRunByHand(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	schema := schemaOf(t, u)
	conn := adminConn(t)
	for range 2 {
		if _, err := conn.Exec(ctx, stempostgres.SQL(schema)); err != nil {
			t.Fatalf("SQL(%q): %v", schema, err)
		}
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, "stem_migrations"}.Sanitize()).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if want := stempostgres.LatestVersionForTest(); n != want {
		t.Fatalf("%d versions recorded, want %d", n, want)
	}
	if err := stempostgres.Migrate(ctx, u); err != nil {
		t.Fatalf("Migrate after SQL: %v", err)
	}
}

// A schema at version 1 (stem before the byte-order collation) migrates
// to the latest with its rows kept, and its name and id columns then
// compare bytes (COLLATE "C"), which the indexes' speed relies on.
func TestMigrateFromVersion1CollatesC(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	schema := schemaOf(t, u)
	conn := adminConn(t)
	if _, err := conn.Exec(ctx, stempostgres.SQLUpToForTest(schema, 1)); err != nil {
		t.Fatalf("version 1: %v", err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO "+pgx.Identifier{schema, "stem_tasks"}.Sanitize()+
		" (namespace, queue, visible_at, due_at, task_id, payload) VALUES ('old', 'q', now(), now(), 'old1', '\\x00')"); err != nil {
		t.Fatal(err)
	}
	if err := stempostgres.Migrate(ctx, u); err != nil {
		t.Fatalf("Migrate from version 1: %v", err)
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, "stem_tasks"}.Sanitize()+" WHERE task_id = 'old1'").Scan(&n); err != nil || n != 1 {
		t.Fatalf("the version 1 row after Migrate: %d rows, %v; want 1", n, err)
	}
	// Every text column of an index of stem's tables.
	rows, err := conn.Query(ctx, `SELECT DISTINCT c.relname || '.' || a.attname, coalesce(co.collname, '')
		FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
		LEFT JOIN pg_collation co ON co.oid = a.attcollation
		WHERE n.nspname = $1 AND c.relname LIKE 'stem\_%' AND a.atttypid = 'text'::regtype ORDER BY 1`, schema)
	cols, err := pgx.CollectRows(rows, pgx.RowToStructByPos[struct{ Col, Collation string }])
	if err != nil {
		t.Fatal(err)
	}
	if len(cols) < 12 {
		t.Fatalf("%d indexed text columns found, want every stem table's (12 or more): %v", len(cols), cols)
	}
	for _, c := range cols {
		if c.Collation != "C" {
			t.Errorf("column %s collates %q, want \"C\"", c.Col, c.Collation)
		}
	}
	// The roles work on the migrated schema.
	r := roles(t, u, "old")
	if d, err := r.Broker.Depth(ctx, "q"); err != nil || d != 1 {
		t.Fatalf("Depth = %d, %v; want the version 1 row", d, err)
	}
}

// Two schemas of one database are two deployments: the same namespace and
// worker id in each never see the other's tasks, commands, replies or
// presence, although NOTIFY is per database.
func TestSchemasNeverCross(t *testing.T) {
	ua, ub := testutil.PostgresSchema(t), testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	a, b := roles(t, ua, "same"), roles(t, ub, "same")

	subA, err := a.Control.Subscribe(ctx, "w1")
	if err != nil {
		t.Fatal(err)
	}
	defer subA.Close()
	subB, err := b.Control.Subscribe(ctx, "w1")
	if err != nil {
		t.Fatal(err)
	}
	defer subB.Close()
	if err := a.Broker.Publish(ctx, envelope("a-task", "q")); err != nil {
		t.Fatal(err)
	}
	if err := a.Control.Publish(ctx, nil, []byte("a-broadcast")); err != nil {
		t.Fatal(err)
	}
	if err := a.Control.Publish(ctx, []string{"w1"}, bytes.Repeat([]byte("a"), 9000)); err != nil {
		t.Fatal(err)
	}
	if err := a.Control.Reply(ctx, "req", []byte("a-reply")); err != nil {
		t.Fatal(err)
	}
	if err := a.Control.Announce(ctx, stemtype.WorkerInfo{ID: "w1", Instance: "a"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	// Fences in b, published after everything of a.
	if err := b.Control.Publish(ctx, nil, []byte("b-fence")); err != nil {
		t.Fatal(err)
	}
	if err := b.Control.Reply(ctx, "req", []byte("b-fence")); err != nil {
		t.Fatal(err)
	}

	select {
	case m := <-subB.C():
		if string(m) != "b-fence" {
			t.Fatalf("b's subscriber got %.40q before its fence", m)
		}
	case <-ctx.Done():
		t.Fatal("b's fence never arrived")
	}
	for i, want := range []string{"a-broadcast", strings.Repeat("a", 9000)} {
		select {
		case m := <-subA.C():
			if string(m) != want {
				t.Fatalf("a's message %d = %.40q, want %.40q", i, m, want)
			}
		case <-ctx.Done():
			t.Fatalf("a's message %d never arrived", i)
		}
	}
	var first string
	if err := b.Control.Replies(ctx, "req", func(m []byte) bool { first = string(m); return false }); err != nil {
		t.Fatal(err)
	}
	if first != "b-fence" {
		t.Fatalf("b's replies start with %q, want its fence", first)
	}
	if ws, err := b.Control.Workers(ctx); err != nil || len(ws) != 0 {
		t.Fatalf("b's workers = %+v, %v; want none", ws, err)
	}
	if err := b.Control.Announce(ctx, stemtype.WorkerInfo{ID: "w1", Instance: "b"}, time.Minute); err != nil {
		t.Fatalf("b's w1 refused because of a's: %v", err)
	}
	if d, err := b.Broker.Depth(ctx, "q"); err != nil || d != 0 {
		t.Fatalf("b's depth = %d, %v; want 0", d, err)
	}
	ds, err := b.Broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "w1", Max: 10, Lease: time.Minute})
	if err != nil || len(ds) != 0 {
		t.Fatalf("b claimed %d of a's tasks (%v)", len(ds), err)
	}
	if d, err := a.Broker.Depth(ctx, "q"); err != nil || d != 1 {
		t.Fatalf("a's depth = %d, %v; want 1", d, err)
	}
}

// A control message past NOTIFY's 8000-byte limit, and one that is not
// UTF-8, reach their subscriber intact and in order with small ones.
func TestLongControlMessage(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	r := roles(t, u, "long")
	sub, err := r.Control.Subscribe(ctx, "w1")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	long := bytes.Repeat([]byte(`{"pad":"0123456789"}`), 2000) // 40,000 bytes
	msgs := [][]byte{[]byte("small-1"), long, {0xff, 0x00, 'x'}, []byte("small-2")}
	for _, m := range msgs {
		if err := r.Control.Publish(ctx, []string{"w1"}, m); err != nil {
			t.Fatalf("publish %d bytes: %v", len(m), err)
		}
	}
	for i, want := range msgs {
		select {
		case got := <-sub.C():
			if !bytes.Equal(got, want) {
				t.Fatalf("message %d: got %d bytes %.30q, want %d bytes %.30q", i, len(got), got, len(want), want)
			}
		case <-ctx.Done():
			t.Fatalf("message %d (%d bytes) never arrived", i, len(want))
		}
	}
}

// txClient returns a client whose broker and results write in tx.
func txClient(t *testing.T, r systemtest.Roles, tx pgx.Tx, reg *stem.Registry) *stem.Client {
	t.Helper()
	c, err := stem.NewClient(stem.ClientConfig{
		Broker:   r.Broker.(*stempostgres.Broker).InTx(tx),
		Results:  r.Results.(*stempostgres.Results).InTx(tx),
		Registry: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A task enqueued in a transaction that rolls back leaves no task and no
// pending result; one whose transaction commits runs, and is invisible to
// others until the commit.
func TestTxEnqueue(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	ns := "tx"
	r := roles(t, u, ns)
	app, err := pgxpool.New(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	reg := stem.NewRegistry()
	stem.Register(reg, "echo", func(_ *stem.TaskContext, a stem.Args) (any, error) { return a, nil }, stem.TaskOptions{})
	plain, err := stem.NewClient(stem.ClientConfig{Broker: r.Broker, Results: r.Results, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}

	tx, err := app.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rolled, err := txClient(t, r, tx, reg).Enqueue(ctx, "echo", map[string]int{"n": 1}, stem.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if d, err := r.Broker.Depth(ctx, stemtype.DefaultQueue); err != nil || d != 0 {
		t.Fatalf("after rollback: depth %d, %v; want 0", d, err)
	}
	if res, err := plain.Status(ctx, rolled); !errors.Is(err, stemdriver.ErrNotFound) {
		t.Fatalf("after rollback: status %+v, %v; want not found", res, err)
	}

	w := systemtest.NewWorker(t, ns, reg, r, stem.WorkerConfig{})
	systemtest.RunWorker(t, w)
	tx, err = app.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	committed, err := txClient(t, r, tx, reg).Enqueue(ctx, "echo", map[string]int{"n": 2}, stem.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d, err := r.Broker.Depth(ctx, stemtype.DefaultQueue); err != nil || d != 0 {
		t.Fatalf("before commit: depth seen outside the transaction %d, %v; want 0", d, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := plain.Wait(ctx, committed)
	if err != nil {
		t.Fatal(err)
	}
	if res.State != stemtype.StateSucceeded || string(res.Result) != `{"n":2}` {
		t.Fatalf("committed task: %s %s, want succeeded {\"n\":2}", res.State, res.Result)
	}
	if res, err := plain.Status(ctx, rolled); !errors.Is(err, stemdriver.ErrNotFound) {
		t.Fatalf("rolled-back task appeared: %+v, %v", res, err)
	}
}

// withAppName returns u with application_name set, so that a test can
// find (and terminate) the connections of the drivers it opens.
func withAppName(u, name string) string {
	return u + "&application_name=" + name
}

// terminate ends every server connection of application name, returning
// how many it ended.
func terminate(t *testing.T, conn *pgx.Conn, name string) int {
	t.Helper()
	var n int
	err := conn.QueryRow(context.Background(),
		"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()", name).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A pg_terminate_backend of every connection of a running worker (its
// pool's and its listener's) loses nothing: the task that was running
// finishes, tasks enqueued after are picked up (the listener reconnects
// and the idle claim is woken or polls), and control still works.
func TestTerminateBackendReconnect(t *testing.T) {
	base := testutil.PostgresSchema(t)
	app := fmt.Sprintf("stemtest-term-%d", time.Now().UnixNano())
	u := withAppName(base, app)
	ctx := boundCtx(t)
	ns := "term"
	r := roles(t, u, ns)
	admin := adminConn(t)

	gate := make(chan struct{})
	started := make(chan string, 16)
	reg := stem.NewRegistry()
	stem.Register(reg, "gated", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		started <- tc.TaskID()
		select {
		case <-gate:
		case <-tc.Done():
			return nil, tc.Err()
		}
		return "done", nil
	}, stem.TaskOptions{MaxRetries: 10})
	stem.Register(reg, "quick", func(*stem.TaskContext, stem.Args) (any, error) { return "ok", nil }, stem.TaskOptions{MaxRetries: 10})

	// The client's drivers are on another application name: only the
	// worker's connections are terminated.
	cr := roles(t, withAppName(base, app+"-client"), ns)
	client, err := stem.NewClient(stem.ClientConfig{Broker: cr.Broker, Results: cr.Results, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	w := systemtest.NewWorker(t, ns, reg, r, stem.WorkerConfig{ClaimWait: 5 * time.Second})
	systemtest.RunWorker(t, w)

	running, err := client.Enqueue(ctx, "gated", nil, stem.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("gated task never started")
	}
	if n := terminate(t, admin, app); n == 0 {
		t.Fatal("no connection of the worker to terminate")
	}
	close(gate)
	var ids []string
	for range 20 {
		id, err := client.Enqueue(ctx, "quick", nil, stem.EnqueueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for _, id := range append(ids, running) {
		res, err := client.Wait(ctx, id)
		if err != nil {
			t.Fatalf("task %s after terminate: %v", id, err)
		}
		if res.State != stemtype.StateSucceeded {
			t.Fatalf("task %s after terminate: %s %+v", id, res.State, res.Error)
		}
	}
	// Once more, while the worker is idle: its listener and pooled
	// connections are cut, and a new task still runs.
	if n := terminate(t, admin, app); n == 0 {
		t.Fatal("no connection of the worker to terminate the second time")
	}
	id, err := client.Enqueue(ctx, "quick", nil, stem.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := client.Wait(ctx, id); err != nil || res.State != stemtype.StateSucceeded {
		t.Fatalf("task after idle terminate: %+v, %v", res, err)
	}
	// The control plane answers after the reconnect.
	if err := r.Control.Publish(ctx, nil, []byte("x")); err != nil {
		t.Fatalf("control publish after terminate: %v", err)
	}
}
