package stemsqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// rawFileAt creates, at path, a file at schema version v as a stem of that
// version would have left it (migrations up to v, nothing of later ones),
// holding recs, written as that stem wrote them.
func rawFileAt(t *testing.T, path string, v int, recs ...stemtype.RevokeRecord) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for i := range v {
		if _, err := db.Exec(migrations[i]); err != nil {
			t.Fatalf("migration %d: %v", i, err)
		}
	}
	if _, err := db.Exec(fmt.Sprintf("PRAGMA user_version = %d", v)); err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		body, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(`INSERT INTO stem_revokes (namespace, task_id, version, expires_at, body) VALUES (?1, ?2, ?3, ?4, ?5)`,
			r.Namespace, r.TaskID, r.Version, nanos(r.ExpiresAt), body); err != nil {
			t.Fatal(err)
		}
	}
}

// userVersion returns the schema version of the file at path.
func userVersion(t *testing.T, path string) int {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v int
	if err := db.QueryRow("PRAGMA user_version").Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// changes calls ListChanges and fails t on an error or an empty cursor.
func changes(ctx context.Context, t *testing.T, rs *Revokes, ns, cursor string) ([]stemtype.RevokeRecord, string) {
	t.Helper()
	recs, next, err := rs.ListChanges(ctx, ns, cursor)
	if err != nil {
		t.Fatalf("ListChanges(%s, %q): %v", ns, cursor, err)
	}
	if next == "" {
		t.Fatalf("ListChanges(%s, %q) returned the cursor \"\"", ns, cursor)
	}
	return recs, next
}

// versions returns "task@version" of each record, in the order given.
func versions(recs []stemtype.RevokeRecord) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.TaskID + "@" + strconv.FormatInt(r.Version, 10)
	}
	return out
}

func wantVersions(t *testing.T, what string, recs []stemtype.RevokeRecord, want ...string) {
	t.Helper()
	got := versions(recs)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s: %v; want %v", what, got, want)
	}
}

// openPrivateRevokes opens a revoke store on a private handle of the file
// of u (bypassing the process's shared one): what another process opening
// the file would have, its own connections and its own flock included.
func openPrivateRevokes(t *testing.T, u string) *Revokes {
	t.Helper()
	cfg, err := parseConfig(u, testOpts("x"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := openPrivate(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	rs := &Revokes{role: newRole(st, cfg, "revokes")}
	t.Cleanup(func() {
		if err := rs.Close(); err != nil {
			t.Errorf("close revokes: %v", err)
		}
	})
	return rs
}

// A file at schema version 2 with revoke records migrates to version 3
// when opened: its records are kept, ListChanges("") lists them all, and
// the cursor it returns lists exactly what is written after.
func TestVersion2FileMigratesToChangeSequence(t *testing.T) {
	ctx := testCtx(t)
	u, path := tempURL(t, "v2.db")
	now := time.Now()
	a := stemtype.RevokeRecord{Namespace: "x", TaskID: "a", Version: 7, IssuedAt: now, Reason: "a"}
	b := stemtype.RevokeRecord{Namespace: "x", TaskID: "b", Version: 3, IssuedAt: now, ExpiresAt: now.Add(time.Hour)}
	c := stemtype.RevokeRecord{Namespace: "y", TaskID: "c", Version: 1, IssuedAt: now}
	rawFileAt(t, path, 2, a, b, c)

	rs := opened[*Revokes](t)(OpenRevokes(ctx, u, testOpts("x")))
	if v := userVersion(t, path); v != schemaVersion {
		t.Fatalf("schema version after the open = %d; want %d", v, schemaVersion)
	}
	recs, err := rs.List(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	wantVersions(t, "List after the migration", recs, "a@7", "b@3")
	if len(recs) > 0 && recs[0].Reason != "a" {
		t.Errorf("record a after the migration = %+v; want its reason kept", recs[0])
	}
	all, cur := changes(ctx, t, rs, "x", "")
	wantVersions(t, `ListChanges("") after the migration`, all, "a@7", "b@3")
	others, _ := changes(ctx, t, rs, "y", "")
	wantVersions(t, `ListChanges("") of the other namespace`, others, "c@1")

	none, cur := changes(ctx, t, rs, "x", cur)
	wantVersions(t, "ListChanges with nothing changed", none)
	b.Version = 1
	if _, err := rs.Upsert(ctx, b); err != nil {
		t.Fatal(err)
	}
	got, _ := changes(ctx, t, rs, "x", cur)
	wantVersions(t, "ListChanges after an upsert of a migrated record", got, "b@4")
}

// A file of schema version 1 (before revoke tombstones) is migrated to the
// current version on open, its revoke records kept, and the tombstones
// work on it.
func TestVersion1FileGainsRevokeTombstones(t *testing.T) {
	ctx := testCtx(t)
	u, path := tempURL(t, "v1.db")
	now := time.Now()
	old := stemtype.RevokeRecord{Namespace: "x", TaskID: "a", Version: 7, IssuedAt: now, ExpiresAt: now.Add(-time.Minute)}
	rawFileAt(t, path, 1, old)
	rs, err := OpenRevokes(ctx, u, testOpts("x"))
	if err != nil {
		t.Fatalf("open of a version 1 file: %v", err)
	}
	defer rs.Close()
	if v := userVersion(t, path); v != schemaVersion {
		t.Fatalf("schema version after the open = %d; want %d", v, schemaVersion)
	}
	if recs, err := rs.List(ctx, "x"); err != nil || len(recs) != 1 || recs[0].Version != 7 {
		t.Fatalf("records after the migration = %v, %v; want a@7", recs, err)
	}
	if n, err := rs.Prune(ctx, "x", now); err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1", n, err)
	}
	late := old
	late.Version, late.ExpiresAt = 6, now.Add(time.Hour)
	if out, err := rs.Upsert(ctx, late); err != nil || out[0].Version != 0 {
		t.Fatalf("late Upsert after the prune = %v, %v; want it ignored (version 0)", out, err)
	}
}

// Two stores on one file, each on a handle of its own as two processes
// would have, upsert at once, some tasks both and some each its own; a
// third lists changes meanwhile and applies them in order, as a worker's
// cache does. At the end it holds every record at its newest version: no
// change was missed, none came back older. And every record stored took
// a number of its own: the counter counts exactly the records stored.
func TestRevokeChangesOfConcurrentWritersAreAllListed(t *testing.T) {
	ctx := testCtx(t)
	u, path := tempURL(t, "concurrent.db")
	writers := []*Revokes{openPrivateRevokes(t, u), openPrivateRevokes(t, u)}
	reader := openPrivateRevokes(t, u)
	const rounds = 300

	held := map[string]int64{}
	apply := func(recs []stemtype.RevokeRecord) {
		for _, r := range recs {
			if r.Version < held[r.TaskID] {
				t.Errorf("task %s listed at version %d after version %d", r.TaskID, r.Version, held[r.TaskID])
			}
			held[r.TaskID] = r.Version
		}
	}
	_, cur := changes(ctx, t, reader, "x", "")

	done := make(chan struct{})
	progress := make(chan struct{}) // a listing finished while a writer waited
	readerDone := make(chan struct{})
	calls := 0
	go func() {
		defer close(readerDone)
		for {
			select {
			case <-done:
				return
			default:
			}
			recs, next, err := reader.ListChanges(ctx, "x", cur)
			if err != nil {
				t.Errorf("ListChanges: %v", err)
				return
			}
			apply(recs)
			cur = next
			calls++
			select {
			case progress <- struct{}{}:
			default:
			}
		}
	}()

	var wg sync.WaitGroup
	stored := make([]int, len(writers))
	for w, rs := range writers {
		wg.Go(func() {
			for r := range rounds {
				if r%50 == 25 {
					// Let the reader list between these writes.
					select {
					case <-progress:
					case <-ctx.Done():
						return
					}
				}
				now := time.Now()
				recs := []stemtype.RevokeRecord{
					{Namespace: "x", TaskID: fmt.Sprintf("shared-%d", r%7), Version: 1, IssuedAt: now, Reason: fmt.Sprint(w)},
					{Namespace: "x", TaskID: fmt.Sprintf("own-%d-%d", w, r), Version: 1, IssuedAt: now},
				}
				out, err := rs.Upsert(ctx, recs...)
				if err != nil {
					t.Errorf("writer %d, round %d: %v", w, r, err)
					return
				}
				for _, o := range out {
					if o.Version > 0 {
						stored[w]++
					}
				}
			}
		})
	}
	wg.Wait()
	close(done)
	<-readerDone
	if t.Failed() {
		return
	}
	if calls < 2*rounds/50 {
		t.Fatalf("%d listings made while the writers wrote; want at least %d", calls, 2*rounds/50)
	}
	recs, _ := changes(ctx, t, reader, "x", cur)
	apply(recs)

	want, err := reader.List(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if len(want) != 7+2*rounds {
		t.Fatalf("List holds %d records; want %d", len(want), 7+2*rounds)
	}
	for _, r := range want {
		if held[r.TaskID] != r.Version {
			t.Errorf("task %s: listed changes end at version %d; stored %d", r.TaskID, held[r.TaskID], r.Version)
		}
	}
	if len(held) != len(want) {
		t.Errorf("listed changes hold %d tasks; List %d", len(held), len(want))
	}

	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var counter, rows, distinct int
	if err := db.QueryRow(`SELECT seq FROM stem_revoke_changes`).Scan(&counter); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`SELECT count(*), count(DISTINCT seq) FROM stem_revokes`).Scan(&rows, &distinct); err != nil {
		t.Fatal(err)
	}
	if total := stored[0] + stored[1]; counter != total {
		t.Errorf("change counter = %d; want %d, one number for each record stored", counter, total)
	}
	if distinct != rows {
		t.Errorf("%d rows hold %d distinct seq numbers; want one each", rows, distinct)
	}
}

// A cursor that this file did not issue lists every record: one of another
// file, one of this path's file before it was deleted and created again,
// and one past the file's counter (a copy put back).
func TestRevokeCursorOfAnotherFileListsEverything(t *testing.T) {
	ctx := testCtx(t)
	u1, _ := tempURL(t, "one.db")
	u2, path2 := tempURL(t, "two.db")
	rec := func(id string) stemtype.RevokeRecord {
		return stemtype.RevokeRecord{Namespace: "x", TaskID: id, Version: 1, IssuedAt: time.Now()}
	}

	one := opened[*Revokes](t)(OpenRevokes(ctx, u1, testOpts("x")))
	for i := range 5 {
		if _, err := one.Upsert(ctx, rec(fmt.Sprint("one-", i))); err != nil {
			t.Fatal(err)
		}
	}
	_, fromOne := changes(ctx, t, one, "x", "")

	two, err := OpenRevokes(ctx, u2, testOpts("x"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := two.Upsert(ctx, rec("two-a")); err != nil {
		t.Fatal(err)
	}
	got, fromTwo := changes(ctx, t, two, "x", fromOne)
	wantVersions(t, "changes since another file's cursor", got, "two-a@1")

	epoch, _, _ := strings.Cut(fromTwo, ":")
	got, _ = changes(ctx, t, two, "x", epoch+":1000")
	wantVersions(t, "changes since a cursor past the counter", got, "two-a@1")

	// The file deleted and created again at the same path: a new epoch.
	if err := two.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path2, path2 + "-wal", path2 + "-shm"} {
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	again := opened[*Revokes](t)(OpenRevokes(ctx, u2, testOpts("x")))
	if _, err := again.Upsert(ctx, rec("again-a"), rec("again-b")); err != nil {
		t.Fatal(err)
	}
	got, _ = changes(ctx, t, again, "x", fromTwo)
	wantVersions(t, "changes since the deleted file's cursor", got, "again-a@1", "again-b@1")
}

// A change counter deleted by hand loses nothing: ListChanges lists every
// record, and the next Upsert creates the counter anew, with a new epoch,
// so that every earlier cursor lists everything once more.
func TestRevokeChangeCounterDeletedByHand(t *testing.T) {
	ctx := testCtx(t)
	u, path := tempURL(t, "counter.db")
	rs := opened[*Revokes](t)(OpenRevokes(ctx, u, testOpts("x")))
	now := time.Now()
	a := stemtype.RevokeRecord{Namespace: "x", TaskID: "a", Version: 1, IssuedAt: now}
	b := stemtype.RevokeRecord{Namespace: "x", TaskID: "b", Version: 1, IssuedAt: now}
	if _, err := rs.Upsert(ctx, a, b); err != nil {
		t.Fatal(err)
	}
	_, before := changes(ctx, t, rs, "x", "")

	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`DELETE FROM stem_revoke_changes`); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()

	got, none := changes(ctx, t, rs, "x", before)
	wantVersions(t, "changes with no counter", got, "a@1", "b@1")
	got, _ = changes(ctx, t, rs, "x", none)
	wantVersions(t, "changes since the cursor issued with no counter", got, "a@1", "b@1")

	if _, err := rs.Upsert(ctx, b); err != nil {
		t.Fatalf("Upsert with no counter: %v", err)
	}
	got, after := changes(ctx, t, rs, "x", before)
	wantVersions(t, "changes since a cursor of the old counter", got, "a@1", "b@2")
	got, _ = changes(ctx, t, rs, "x", after)
	wantVersions(t, "changes since a cursor of the new counter", got)
}

// A re-sync's statements read by index: ListChanges the records written
// after its cursor, Prune those that expired, so that a re-sync with
// nothing to do reads no record, however many the file holds.
func TestRevokeResyncStatementsUseIndexes(t *testing.T) {
	ctx := testCtx(t)
	u, path := tempURL(t, "plans.db")
	opened[*Revokes](t)(OpenRevokes(ctx, u, testOpts("x")))
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, c := range []struct {
		name, query, index string
		args               []any
	}{
		{"list changes", qRevokeChanges, "stem_revokes_changes", []any{"x", 0}},
		{"bury expired records", qRevokeBury, "stem_revokes_expiry", []any{"x", 1, 2}},
		{"prune expired records", qRevokePrune, "stem_revokes_expiry", []any{"x", 1}},
		{"prune old tombstones", qRevokeTombsPrune, "stem_revoke_tombstones_expiry", []any{"x", 1}},
	} {
		rows, err := db.QueryContext(ctx, "EXPLAIN QUERY PLAN "+c.query, c.args...)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if err := rows.Close(); err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(plan, func(d string) bool { return strings.Contains(d, "INDEX "+c.index+" ") }) {
			t.Errorf("%s: the plan does not use the index %s: %q", c.name, c.index, plan)
		}
	}
}

// A record written the way a stem of schema version 2 writes it (no seq:
// an older process still running while a newer one migrated the file, as
// in a rolling upgrade), an insert and an update, is listed by the next
// ListChanges like any other change, and once only.
func TestRevokeChangesOfAnOlderWriterAreListed(t *testing.T) {
	ctx := testCtx(t)
	u, path := tempURL(t, "older.db")
	rs := opened[*Revokes](t)(OpenRevokes(ctx, u, testOpts("x")))
	now := time.Now()
	a := stemtype.RevokeRecord{Namespace: "x", TaskID: "a", Version: 1, IssuedAt: now}
	if _, err := rs.Upsert(ctx, a); err != nil {
		t.Fatal(err)
	}
	_, cur := changes(ctx, t, rs, "x", "")

	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	older := func(r stemtype.RevokeRecord) {
		t.Helper()
		body, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		// Version 2's statement, word for word: it names no seq.
		if _, err := db.Exec(`INSERT INTO stem_revokes (namespace, task_id, version, expires_at, body)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (namespace, task_id) DO UPDATE SET
	version = excluded.version, expires_at = excluded.expires_at, body = excluded.body`,
			r.Namespace, r.TaskID, r.Version, nanos(r.ExpiresAt), body); err != nil {
			t.Fatal(err)
		}
	}
	older(stemtype.RevokeRecord{Namespace: "x", TaskID: "b", Version: 5, IssuedAt: now})
	older(stemtype.RevokeRecord{Namespace: "x", TaskID: "a", Version: 2, IssuedAt: now})
	got, next := changes(ctx, t, rs, "x", cur)
	wantVersions(t, "changes written by an older stem", got, "a@2", "b@5")
	got, next = changes(ctx, t, rs, "x", next)
	wantVersions(t, "changes after them", got)

	// This stem's own writes are numbered once, not again by the older
	// writers' trigger.
	if _, err := rs.Upsert(ctx, stemtype.RevokeRecord{Namespace: "x", TaskID: "b", Version: 6, IssuedAt: now}); err != nil {
		t.Fatal(err)
	}
	got, _ = changes(ctx, t, rs, "x", next)
	wantVersions(t, "changes after this stem's upsert", got, "b@6")
	var seqs, distinct, counter int64
	if err := db.QueryRow(`SELECT count(seq), count(DISTINCT seq), (SELECT seq FROM stem_revoke_changes) FROM stem_revokes`).Scan(&seqs, &distinct, &counter); err != nil {
		t.Fatal(err)
	}
	if seqs != 2 || distinct != 2 || counter != 4 {
		t.Errorf("%d rows with %d distinct seqs, counter %d; want 2 rows, 2 seqs, counter 4 (four writes)", seqs, distinct, counter)
	}
}
