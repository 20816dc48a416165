package stempostgres_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stempostgres"
	"github.com/stem-go/stem/stemtype"
)

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// grantRoles migrates the schema of u as its (owner) user, then runs the
// SQL block of docs/security.md that creates the producer, worker and
// operator roles, as written there, with names of their own; it drops the
// roles when t ends and returns each role's URL.
func grantRoles(t *testing.T, u string) map[string]string {
	t.Helper()
	doc, err := os.ReadFile("../docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	start := strings.Index(string(doc), "```sql\nCREATE ROLE stem_producer")
	if start < 0 {
		t.Fatal("docs/security.md has no sql block starting with CREATE ROLE stem_producer")
	}
	block := string(doc)[start+len("```sql\n"):]
	block = block[:strings.Index(block, "```")]

	ctx := context.Background()
	if err := stempostgres.Migrate(ctx, u); err != nil {
		t.Fatal(err)
	}
	schema, err := stempostgres.SchemaFromURL(u)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Close(context.Background()) })
	suffix := randHex(4)
	names := map[string]string{}
	for _, role := range []string{"producer", "worker", "operator"} {
		names[role] = "stem_" + role + "_" + suffix
	}
	// The role names, not the table stem_workers.
	sql := regexp.MustCompile(`\bstem_(producer|worker|operator)\b`).ReplaceAllString(block, "${0}_"+suffix)
	sql = strings.NewReplacer("<schema>", pgx.Identifier{schema}.Sanitize(), "<password>", randHex(12)).Replace(sql)
	t.Cleanup(func() {
		for _, n := range names {
			_, _ = admin.Exec(context.Background(), "DROP OWNED BY "+n)
			_, _ = admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+n)
		}
	})
	for _, stmt := range strings.Split(sql, ";\n") {
		if strings.TrimSpace(stmt) == "" {
			continue
		}
		if _, err := admin.Exec(ctx, stmt); err != nil {
			t.Fatalf("docs/security.md: %s: %v", stmt, err)
		}
	}
	urls := map[string]string{}
	for role, name := range names {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		pu.User = url.User(name) // trust authentication on the test server
		urls[role] = pu.String()
	}
	return urls
}

// denied fails t unless err is Postgres's refusal of a privilege.
func denied(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("%s: err = %v, want permission denied", what, err)
	}
	// A refused privilege is a configuration error: retrying cannot help,
	// so the CLI exits 78, not 69.
	if !errors.Is(err, stemdriver.ErrBadConfig) {
		t.Fatalf("%s: err = %v, want it to match stemdriver.ErrBadConfig", what, err)
	}
}

// TestRolePrivileges runs a deployment whose producer, worker and operator
// each connect as the Postgres role docs/security.md gives them: the
// producer enqueues and reads states but can neither claim nor revoke (and
// its revoke stores nothing), the worker runs tasks, answers a ping and
// reads revokes but stores none, and the operator revokes.
func TestRolePrivileges(t *testing.T) {
	t.Parallel()
	u := testutil.PostgresSchema(t)
	urls := grantRoles(t, u)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := "acl"
	opts := stemdriver.Options{Namespace: ns, Logger: quiet()}
	schema, _ := stempostgres.SchemaFromURL(u)
	admin, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	revokeRows := func() int {
		t.Helper()
		var n int
		if err := admin.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, "stem_revokes"}.Sanitize()).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	reg := stem.NewRegistry()
	stem.Register(reg, "acl.echo", func(_ *stem.TaskContext, a stem.Args) (any, error) { return a, nil }, stem.TaskOptions{Queue: "acl"})

	// The producer.
	pBroker := opened[*stempostgres.Broker](t)(stempostgres.OpenBroker(ctx, urls["producer"], opts))
	pResults := opened[*stempostgres.Results](t)(stempostgres.OpenResults(ctx, urls["producer"], opts))
	client, err := stem.NewClient(stem.ClientConfig{Broker: pBroker, Results: pResults, Registry: reg, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	id, err := client.Enqueue(ctx, "acl.echo", map[string]int{"n": 1}, stem.EnqueueOptions{})
	if err != nil {
		t.Fatalf("producer: Enqueue: %v", err)
	}
	if st, err := client.Status(ctx, id); err != nil || st.State != stemtype.StatePending {
		t.Fatalf("producer: Status = %+v, %v; want pending", st, err)
	}
	_, err = pBroker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"acl"}, Consumer: "p", Max: 1, Lease: time.Minute})
	denied(t, "producer: Claim", err)
	pRevokes := opened[*stempostgres.Revokes](t)(stempostgres.OpenRevokes(ctx, urls["producer"], opts))
	pControl := opened[*stempostgres.Control](t)(stempostgres.OpenControl(ctx, urls["producer"], opts))
	pCtl, err := stem.NewController(stem.ControllerConfig{Namespace: ns, Control: pControl, Revokes: pRevokes, Results: pResults, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = pCtl.Revoke(ctx, stem.Target{Timeout: time.Second}, stem.RevokeOptions{TaskIDs: []string{id}, Terminate: true})
	denied(t, "producer: Revoke --terminate", err)
	if n := revokeRows(); n != 0 {
		t.Fatalf("the producer's revoke left %d rows in stem_revokes", n)
	}
	// The limit docs/security.md states: NOTIFY needs no privilege, so the
	// producer's role can send the workers a command that fits inline.
	if err := pControl.Publish(ctx, nil, []byte(`{}`)); err != nil {
		t.Fatalf("producer: Publish inline = %v; docs/security.md says NOTIFY needs no privilege: update it", err)
	}

	// The worker.
	wOpts := opts
	var wlog testutil.SyncBuffer
	wOpts.Logger = slog.New(slog.NewTextHandler(&wlog, &slog.HandlerOptions{Level: slog.LevelDebug}))
	wRevokes := opened[*stempostgres.Revokes](t)(stempostgres.OpenRevokes(ctx, urls["worker"], wOpts))
	w, err := stem.NewWorker(stem.WorkerConfig{
		ID: "acl-w1", Namespace: ns, Queues: []string{"acl"}, Registry: reg,
		Broker:             opened[*stempostgres.Broker](t)(stempostgres.OpenBroker(ctx, urls["worker"], wOpts)),
		Results:            opened[*stempostgres.Results](t)(stempostgres.OpenResults(ctx, urls["worker"], wOpts)),
		Revokes:            wRevokes,
		Control:            opened[*stempostgres.Control](t)(stempostgres.OpenControl(ctx, urls["worker"], wOpts)),
		RevokeSyncInterval: 100 * time.Millisecond,
		Logger:             wOpts.Logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	wctx, stopWorker := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- w.Run(wctx) }()
	defer func() {
		stopWorker()
		if err := <-ran; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("worker: Run: %v", err)
		}
		if t.Failed() {
			t.Logf("worker log:\n%s", wlog.String())
		}
	}()
	waitCtx, cancelWait := context.WithTimeout(ctx, 30*time.Second)
	defer cancelWait()
	if res, err := client.Wait(waitCtx, id); err != nil || res.State != stemtype.StateSucceeded {
		t.Fatalf("producer: Wait = %+v, %v; want succeeded (the worker claimed, ran and acked it)", res, err)
	}
	_, err = wRevokes.Upsert(ctx, stemtype.RevokeRecord{Namespace: ns, TaskID: "by-worker", Version: 1})
	denied(t, "worker: Upsert", err)
	if n := revokeRows(); n != 0 {
		t.Fatalf("the worker's revoke left %d rows in stem_revokes", n)
	}

	// The operator.
	oResults := opened[*stempostgres.Results](t)(stempostgres.OpenResults(ctx, urls["operator"], opts))
	oCtl, err := stem.NewController(stem.ControllerConfig{
		Namespace: ns, Logger: quiet(), Results: oResults,
		Control: opened[*stempostgres.Control](t)(stempostgres.OpenControl(ctx, urls["operator"], opts)),
		Revokes: opened[*stempostgres.Revokes](t)(stempostgres.OpenRevokes(ctx, urls["operator"], opts)),
	})
	if err != nil {
		t.Fatal(err)
	}
	pong, err := oCtl.Ping(ctx, stem.Target{Workers: []string{"acl-w1"}, Timeout: 10 * time.Second})
	if err != nil || len(pong.Replies) != 1 || pong.Replies[0].WorkerID != "acl-w1" {
		t.Fatalf("operator: Ping = %+v, %v; want acl-w1's reply", pong, err)
	}
	later, err := client.Enqueue(ctx, "acl.echo", map[string]int{"n": 2}, stem.EnqueueOptions{Countdown: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := oCtl.Revoke(ctx, stem.Target{Workers: []string{"acl-w1"}, Timeout: 10 * time.Second}, stem.RevokeOptions{TaskIDs: []string{later}, Terminate: true})
	if err != nil || len(rev.Records) != 1 || rev.Replies == nil || len(rev.Replies.Replies) != 1 || !rev.Checked || len(rev.Unknown) != 0 {
		t.Fatalf("operator: Revoke = %+v, %v; want one record stored, checked, and acl-w1's reply", rev, err)
	}
	if n := revokeRows(); n != 1 {
		t.Fatalf("stem_revokes holds %d rows after the operator's revoke, want 1", n)
	}
	if st, err := client.Status(ctx, later); err != nil || st.State != stemtype.StateCancelled {
		t.Fatalf("producer: Status of the revoked task = %+v, %v; want cancelled (marked by the operator)", st, err)
	}
	// The worker re-reads the revoke store every 100ms with its role,
	// whose prune is refused (a warning); a failed read would be an error.
	// Its prune is refused at every re-sync: it warns once, then says so
	// at debug level only, instead of a warning every RevokeSyncInterval.
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(wlog.String(), "prune expired revokes") < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the worker logged no three re-syncs with its prune refused")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := strings.Count(wlog.String(), `level=WARN msg="prune expired revokes`); n != 1 {
		t.Fatalf("the worker warned %d times of its refused prune, want once", n)
	}
	if log := wlog.String(); strings.Contains(log, "revoke re-sync failed") || strings.Contains(log, "level=ERROR") {
		t.Fatalf("the worker failed under its role:\n%s", log)
	}
}
