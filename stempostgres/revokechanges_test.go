package stempostgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stempostgres"
	"github.com/stem-go/stem/stemtype"
)

// revokeRec is a valid revoke record of task in ns proposing version.
func revokeRec(ns, task string, version int64, reason string) stemtype.RevokeRecord {
	return stemtype.RevokeRecord{Namespace: ns, TaskID: task, Version: version, IssuedAt: time.Now().UTC(),
		Terminate: true, Reason: reason, ExpiresAt: time.Now().Add(time.Hour).UTC()}
}

// listed is what a listing holds: for each task, the version and reason of
// the newest record listed.
func listed(recs []stemtype.RevokeRecord) map[string]string {
	m := map[string]string{}
	for _, r := range recs {
		m[r.TaskID] = fmt.Sprintf("v%d %s", r.Version, r.Reason)
	}
	return m
}

// changes calls ListChanges, fails t on an error or an empty next cursor,
// and returns what it listed and the next cursor.
func changes(ctx context.Context, t *testing.T, rs *stempostgres.Revokes, ns, cursor string) (map[string]string, string) {
	t.Helper()
	recs, next, err := rs.ListChanges(ctx, ns, cursor)
	if err != nil {
		t.Fatalf("ListChanges(%q, %q): %v", ns, cursor, err)
	}
	if next == "" {
		t.Fatalf("ListChanges(%q, %q) returned the cursor \"\"", ns, cursor)
	}
	for _, r := range recs {
		if r.Namespace != ns {
			t.Fatalf("ListChanges(%q) listed a record of namespace %q", ns, r.Namespace)
		}
	}
	return listed(recs), next
}

// wantListed fails t unless got is want.
func wantListed(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	if !maps.Equal(got, want) {
		t.Fatalf("%s: listed %v, want %v", what, got, want)
	}
}

// A transaction that wrote its revoke rows before a listing and commits
// after it is listed by the next listing, although a later transaction's
// row, with a higher transaction id, was listed already: a cursor that
// kept the highest id (or sequence number) listed would miss it for ever.
// The transaction is raw SQL, so this also shows that every writer of the
// table, not only Upsert, sets the rows' transaction id, on an insert and
// on an update.
func TestRevokeChangesCommitOrder(t *testing.T) {
	t.Parallel()
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	ns := "order"
	rs := opened[*stempostgres.Revokes](t)(stempostgres.OpenRevokes(ctx, u, stemdriver.Options{Namespace: ns, Logger: quiet()}))
	table := pgx.Identifier{schemaOf(t, u), "stem_revokes"}.Sanitize()
	if _, err := rs.Upsert(ctx, revokeRec(ns, "task-c", 1, "c1")); err != nil {
		t.Fatal(err)
	}
	all, cur0 := changes(ctx, t, rs, ns, "")
	wantListed(t, "first listing", all, map[string]string{"task-c": "v1 c1"})

	// The early transaction inserts task-a and updates task-c, and stays
	// open.
	early, err := adminConn(t).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = early.Rollback(context.Background()) }()
	body := func(r stemtype.RevokeRecord) []byte {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if _, err := early.Exec(ctx, "INSERT INTO "+table+" (namespace, task_id, version, body) VALUES ($1, 'task-a', 5, $2)",
		ns, body(revokeRec(ns, "task-a", 5, "a5"))); err != nil {
		t.Fatal(err)
	}
	if _, err := early.Exec(ctx, "UPDATE "+table+" SET version = 2, body = $2 WHERE namespace = $1 AND task_id = 'task-c'",
		ns, body(revokeRec(ns, "task-c", 2, "c2"))); err != nil {
		t.Fatal(err)
	}
	var earlyXID string
	if err := early.QueryRow(ctx, "SELECT pg_current_xact_id()::text").Scan(&earlyXID); err != nil {
		t.Fatal(err)
	}

	// A later transaction upserts task-b and commits; a listing finds it,
	// not the early transaction's rows.
	if _, err := rs.Upsert(ctx, revokeRec(ns, "task-b", 3, "b3")); err != nil {
		t.Fatal(err)
	}
	var laterXID string
	if err := adminConn(t).QueryRow(ctx, "SELECT xid::text FROM "+table+" WHERE namespace = $1 AND task_id = 'task-b'", ns).Scan(&laterXID); err != nil {
		t.Fatal(err)
	}
	if e, l := mustUint(t, earlyXID), mustUint(t, laterXID); e >= l {
		t.Fatalf("the early transaction's id %d is not below the later one's %d: the test shows nothing", e, l)
	}
	got, cur1 := changes(ctx, t, rs, ns, cur0)
	wantListed(t, "listing while the early transaction is open", got, map[string]string{"task-b": "v3 b3"})

	if err := early.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got, cur2 := changes(ctx, t, rs, ns, cur1)
	wantListed(t, "listing after the early transaction committed", got, map[string]string{"task-a": "v5 a5", "task-c": "v2 c2"})
	got, _ = changes(ctx, t, rs, ns, cur2)
	wantListed(t, "listing with nothing changed", got, map[string]string{})
}

func mustUint(t *testing.T, s string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A schema at version 5 (before the rows carried their writer's
// transaction id) migrates with its revoke rows kept: the cursor "" lists
// them all, a cursor issued after lists none of them, and one written
// again after the migration is listed as a change.
func TestMigrateFromVersion5ListsRevokes(t *testing.T) {
	t.Parallel()
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	schema := schemaOf(t, u)
	conn := adminConn(t)
	if _, err := conn.Exec(ctx, stempostgres.SQLUpToForTest(schema, 5)); err != nil {
		t.Fatalf("version 5: %v", err)
	}
	table := pgx.Identifier{schema, "stem_revokes"}.Sanitize()
	ns := "old"
	want := map[string]string{}
	for i, r := range []stemtype.RevokeRecord{
		revokeRec(ns, "task-1", 10, "one"), revokeRec(ns, "task-2", 20, "two"), revokeRec(ns, "task-3", 30, "three"),
		revokeRec("other", "task-1", 40, "other namespace"),
	} {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "INSERT INTO "+table+" (namespace, task_id, version, body, expires_at) VALUES ($1, $2, $3, $4, $5)",
			r.Namespace, r.TaskID, r.Version, b, r.ExpiresAt); err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
		if r.Namespace == ns {
			want[r.TaskID] = fmt.Sprintf("v%d %s", r.Version, r.Reason)
		}
	}
	if err := stempostgres.Migrate(ctx, u); err != nil {
		t.Fatalf("Migrate from version 5: %v", err)
	}
	rs := opened[*stempostgres.Revokes](t)(stempostgres.OpenRevokes(ctx, u, stemdriver.Options{Namespace: ns, Logger: quiet()}))
	got, cur := changes(ctx, t, rs, ns, "")
	wantListed(t, "changes since \"\" after the migration", got, want)
	recs, err := rs.List(ctx, ns)
	if err != nil {
		t.Fatal(err)
	}
	wantListed(t, "List after the migration", listed(recs), want)
	got, cur = changes(ctx, t, rs, ns, cur)
	wantListed(t, "changes since a cursor issued after the migration", got, map[string]string{})

	again, err := rs.Upsert(ctx, revokeRec(ns, "task-2", 1, "two again"))
	if err != nil {
		t.Fatal(err)
	}
	if again[0].Version != 21 {
		t.Fatalf("the migrated task-2 upserted again got version %d, want 21", again[0].Version)
	}
	got, _ = changes(ctx, t, rs, ns, cur)
	wantListed(t, "changes after a migrated row was written again", got, map[string]string{"task-2": "v21 two again"})
}

// The records UpsertPublish stores, in its statement for one record and in
// the one for several, are listed as changes like those of Upsert.
func TestRevokeChangesOfUpsertPublish(t *testing.T) {
	t.Parallel()
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	ns := "publish"
	opts := stemdriver.Options{Namespace: ns, Logger: quiet()}
	rs := opened[*stempostgres.Revokes](t)(stempostgres.OpenRevokes(ctx, u, opts))
	c := opened[*stempostgres.Control](t)(stempostgres.OpenControl(ctx, u, opts))
	_, cur := changes(ctx, t, rs, ns, "")
	for _, recs := range [][]stemtype.RevokeRecord{
		{revokeRec(ns, "one", 7, "alone")},
		{revokeRec(ns, "two", 8, "pair"), revokeRec(ns, "three", 9, "pair")},
	} {
		stored, published, err := c.UpsertPublish(ctx, rs, recs, nil, []byte(`{"revoke":true}`))
		if err != nil || !published {
			t.Fatalf("UpsertPublish of %d records = %v, %v; want them stored and published in one statement", len(recs), published, err)
		}
		want := map[string]string{}
		for _, r := range stored {
			want[r.TaskID] = fmt.Sprintf("v%d %s", r.Version, r.Reason)
		}
		var got map[string]string
		got, cur = changes(ctx, t, rs, ns, cur)
		wantListed(t, fmt.Sprintf("changes after UpsertPublish of %v", slices.Sorted(maps.Keys(want))), got, want)
	}
}

// A cursor of this store that does not apply (its epoch names another
// server or table, its snapshot is ahead of the server's, or it does not
// parse) lists every record, never an error.
func TestRevokeChangesForeignCursors(t *testing.T) {
	t.Parallel()
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	ns := "foreign"
	rs := opened[*stempostgres.Revokes](t)(stempostgres.OpenRevokes(ctx, u, stemdriver.Options{Namespace: ns, Logger: quiet()}))
	if _, err := rs.Upsert(ctx, revokeRec(ns, "task-a", 1, "a")); err != nil {
		t.Fatal(err)
	}
	_, cur := changes(ctx, t, rs, ns, "")
	epoch, snap, _ := strings.Cut(cur, "/")
	for _, cursor := range []string{
		"1.2/" + snap, // another server's epoch
		epoch + "/18446744073709551000:18446744073709551000:", // ahead of the server
		epoch + "/5:3:",     // xmax below xmin
		epoch + "/3:10:12",  // an id in progress past xmax
		epoch + "/3:10:7,5", // ids in progress out of order
		epoch + "/0:10:",    // xmin 0
		epoch + "/x:y:",
		epoch,
		"/" + snap,
	} {
		got, next := changes(ctx, t, rs, ns, cursor)
		wantListed(t, fmt.Sprintf("changes since %q", cursor), got, map[string]string{"task-a": "v1 a"})
		if got, _ := changes(ctx, t, rs, ns, next); len(got) != 0 {
			t.Fatalf("the cursor returned for %q lists %v again", cursor, got)
		}
	}
}

// A server that refuses the change listing's statement (one without a
// function it calls, or that does not let the worker's user execute it)
// still has its revokes read, whole, at every re-sync, with a warning
// logged once, rather than a re-sync that fails for ever.
func TestRevokeChangesRefusedFallBackToList(t *testing.T) {
	t.Parallel()
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	ns := "refused"
	logs := &testutil.SyncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	rs := opened[*stempostgres.Revokes](t)(stempostgres.OpenRevokes(ctx, u, stemdriver.Options{Namespace: ns, Logger: logger}))
	if _, err := rs.Upsert(ctx, revokeRec(ns, "task-a", 1, "a"), revokeRec(ns, "task-b", 1, "b")); err != nil {
		t.Fatal(err)
	}
	_, cursor := changes(ctx, t, rs, ns, "")
	stempostgres.RefuseChangeListingForTest(rs)
	all := map[string]string{"task-a": "v1 a", "task-b": "v1 b"}
	got, next := changes(ctx, t, rs, ns, cursor)
	wantListed(t, "a listing the server refused, from a cursor", got, all)
	got, _ = changes(ctx, t, rs, ns, next)
	wantListed(t, "the listing after it", got, all)
	if n := strings.Count(logs.String(), "refused the change listing"); n != 1 {
		t.Errorf("the refusal was logged %d times, want once:\n%s", n, logs.String())
	}
	if err := rs.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := rs.ListChanges(ctx, ns, next); err == nil {
		t.Error("ListChanges on a closed store: no error")
	}
}

// A re-sync's prune finds what expired by the indexes of revoke records and
// tombstones by namespace and expiry, not by reading every record of the
// namespace (a million, on every worker, every 30 s).
func TestRevokePruneUsesExpiryIndexes(t *testing.T) {
	t.Parallel()
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	schema := schemaOf(t, u)
	revokes := pgx.Identifier{schema, "stem_revokes"}.Sanitize()
	tombs := pgx.Identifier{schema, "stem_revoke_tombstones"}.Sanitize()
	admin := planDB(t, ctx, u,
		`INSERT INTO `+revokes+` (namespace, task_id, version, body, expires_at)
SELECT 'ns', 'task-' || i, 1, '{}', now() + interval '1 day' FROM generate_series(1, 20000) i`,
		`INSERT INTO `+tombs+` (namespace, task_id, version, expires_at)
SELECT 'ns', 'task-' || i, 1, now() + interval '1 day' FROM generate_series(1, 20000) i`,
		"ANALYZE "+revokes, "ANALYZE "+tombs)
	records, tombstones := stempostgres.PruneSQLForTest(schema)
	for _, tc := range []struct {
		what, stmt, table, index string
		args                     []any
	}{
		{"prune of records", records, "stem_revokes", "stem_revokes_expiry", []any{"ns", int64(86_400_000_000)}},
		{"prune of tombstones", tombstones, "stem_revoke_tombstones", "stem_revoke_tombstones_expiry", []any{"ns"}},
	} {
		var root []struct {
			Plan planNode `json:"Plan"`
		}
		if err := json.Unmarshal(explain(t, ctx, admin, tc.what, tc.stmt, tc.args...), &root); err != nil || len(root) != 1 {
			t.Fatalf("%s: plan: %v", tc.what, err)
		}
		var nodes []string
		seqScan, indexUsed := false, false
		root[0].Plan.walk(func(n planNode) {
			nodes = append(nodes, strings.TrimSpace(n.NodeType+" "+n.RelationName+" "+n.IndexName))
			seqScan = seqScan || (n.NodeType == "Seq Scan" && n.RelationName == tc.table)
			indexUsed = indexUsed || n.IndexName == tc.index
		})
		if seqScan || !indexUsed {
			t.Errorf("%s: plan %q; want %s read by index %s, with no sequential scan", tc.what, nodes, tc.table, tc.index)
		}
	}
}
