package stempostgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// Revokes is a stemdriver.RevokeStore on Postgres: one row per namespace
// and task in stem_revokes, written by an upsert that assigns the version
// max(stored+1, proposed) in the same statement. Records carry their
// namespace, so opts.Namespace is not used. It lists changes
// (stemdriver.RevokeChangeLister) by the writers' transaction ids. It is
// safe for concurrent use.
type Revokes struct {
	role
	// changesRefused is set once the server refused the change listing
	// (see ListChanges), so that it is logged once.
	changesRefused atomic.Bool
}

var (
	_ stemdriver.RevokeStore        = (*Revokes)(nil)
	_ stemdriver.RevokeChangeLister = (*Revokes)(nil)
)

// OpenRevokes connects to the Postgres server at url, migrates its schema
// when needed, and returns a revoke store.
func OpenRevokes(ctx context.Context, url string, opts stemdriver.Options) (*Revokes, error) {
	s, cfg, err := openShared(ctx, url, opts)
	if err != nil {
		return nil, err
	}
	return &Revokes{role: role{s: s, name: "revokes", ns: cfg.namespace, log: cfg.logger}}, nil
}

// Upsert stores recs with one INSERT ... ON CONFLICT DO UPDATE SET version
// = greatest(stored+1, proposed) per run of records without a repeated
// task (a task given twice starts the next run, applied after), and
// returns them in input order with the versions assigned. A task stored at
// the highest int64 version makes its statement fail (bigint out of
// range), storing nothing of its run. A record of a task with no stored
// record and a tombstone at or above its proposed version is not stored
// and comes back with Version 0.
func (s *Revokes) Upsert(ctx context.Context, recs ...stemtype.RevokeRecord) ([]stemtype.RevokeRecord, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	out := make([]stemtype.RevokeRecord, len(recs))
	copy(out, recs)
	if len(recs) == 0 {
		return out, nil
	}
	groups, err := revokeGroups(recs)
	if err != nil {
		return nil, err
	}
	// Runs go one statement (one transaction) each: runs of one call in
	// one transaction could deadlock with another call's.
	for _, g := range groups {
		if _, err := s.upsertGroup(ctx, s.s.q.upsertRevokes, g.args(), g, recs, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// revokeGroup is one upsertRevokes statement's arrays, and the indexes in
// the call of its records.
type revokeGroup struct {
	idx        []int
	nss, tasks []string
	versions   []int64
	bodies     [][]byte
	expires    []*time.Time
}

// revokeGroups checks and encodes recs into runs without a repeated
// namespace and task (a repeated one starts the next run, applied after).
func revokeGroups(recs []stemtype.RevokeRecord) ([]*revokeGroup, error) {
	var groups []*revokeGroup
	var g *revokeGroup
	var seen map[[2]string]bool
	for i, r := range recs {
		if err := r.Validate(); err != nil {
			return nil, fmt.Errorf("stem: postgres revokes: upsert: %w", err)
		}
		body, err := json.Marshal(r)
		if err != nil {
			return nil, fmt.Errorf("stem: postgres revokes: upsert: encode record of task %q: %w", r.TaskID, err)
		}
		k := [2]string{r.Namespace, r.TaskID}
		if g == nil || seen[k] {
			g = &revokeGroup{}
			groups = append(groups, g)
			seen = make(map[[2]string]bool)
		}
		seen[k] = true
		var exp *time.Time
		if !r.ExpiresAt.IsZero() {
			t := r.ExpiresAt
			exp = &t
		}
		g.idx = append(g.idx, i)
		g.nss, g.tasks, g.versions = append(g.nss, r.Namespace), append(g.tasks, r.TaskID), append(g.versions, r.Version)
		g.bodies, g.expires = append(g.bodies, body), append(g.expires, exp)
	}
	return groups, nil
}

// args returns upsertRevokes's parameters for g.
func (g *revokeGroup) args() []any {
	return []any{g.nss, g.tasks, g.versions, g.bodies, g.expires}
}

// upsertGroup runs sql, upsertRevokes or a statement built on it, with
// args (g's records), and sets the versions stored in out (indexed like
// recs). A statement that selects a fourth column (a count of
// notifications) has it returned.
func (s *Revokes) upsertGroup(ctx context.Context, sql string, args []any, g *revokeGroup, recs, out []stemtype.RevokeRecord) (int64, error) {
	rows, err := s.s.pool.Query(ctx, sql, args...)
	if err != nil {
		return 0, s.upsertFailed(err, recs)
	}
	return s.scanUpserted(rows, g, recs, out)
}

// upsertFailed is the error of an upsert of recs that failed with err.
func (s *Revokes) upsertFailed(err error, recs []stemtype.RevokeRecord) error {
	return s.errorf(err, "upsert %d revoke records (first task %q)", len(recs), recs[0].TaskID)
}

// upsertNotifyEarly runs sql as upsertGroup does, a statement that sends a
// NOTIFY, with queryAsyncCommit and a flush: the call returns once the
// records are durable, as with upsertGroup, but workers hear of them one
// disk flush sooner (revoke --terminate to the task's context cancelled:
// 0.50 ms at the median, from 0.72). A worker may act before the records
// are durable; a crash of the server in between loses them only if
// nothing committed after them reached the disk (the worker's own outcome
// for the task included), and the call then fails.
func (s *Revokes) upsertNotifyEarly(ctx context.Context, sql string, args []any, g *revokeGroup, recs, out []stemtype.RevokeRecord) (int64, error) {
	var n int64
	err := queryAsyncCommit(ctx, s.s.pool, true, sql, args, func(rows pgx.Rows) (err error) {
		n, err = s.scanUpserted(rows, g, recs, out)
		return err
	})
	if err != nil {
		return 0, s.upsertFailed(err, recs)
	}
	return n, nil
}

// scanUpserted reads the rows of an upsert statement (see upsertGroup).
func (s *Revokes) scanUpserted(rows pgx.Rows, g *revokeGroup, recs, out []stemtype.RevokeRecord) (int64, error) {
	fail := func(err error) (int64, error) { return 0, s.upsertFailed(err, recs) }
	assigned := make(map[[2]string]int64, len(g.idx))
	var notified int64
	for rows.Next() {
		var ns, task string
		var v int64
		dst := []any{&ns, &task, &v}
		if len(rows.FieldDescriptions()) == 4 {
			dst = append(dst, &notified)
		}
		if err := rows.Scan(dst...); err != nil {
			rows.Close()
			return fail(err)
		}
		assigned[[2]string{ns, task}] = v
	}
	if err := rows.Err(); err != nil {
		return fail(err)
	}
	for _, i := range g.idx {
		// No row comes back for a record a tombstone kept out: it is
		// returned with Version 0 (stemdriver.RevokeStore).
		out[i].Version = assigned[[2]string{recs[i].Namespace, recs[i].TaskID}]
	}
	return notified, nil
}

// List returns every stored record of namespace, expired ones included
// until pruned, with their stored versions.
func (s *Revokes) List(ctx context.Context, namespace string) ([]stemtype.RevokeRecord, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	rows, err := s.s.pool.Query(ctx, s.s.q.listRevokes, namespace)
	if err != nil {
		return nil, s.errorf(err, "list revokes of namespace %q", namespace)
	}
	defer rows.Close()
	var out []stemtype.RevokeRecord
	for rows.Next() {
		var v int64
		var body []byte
		if err := rows.Scan(&v, &body); err != nil {
			return nil, s.errorf(err, "list revokes of namespace %q", namespace)
		}
		if r, ok := s.decode(namespace, v, body); ok {
			out = append(out, r)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, s.errorf(err, "list revokes of namespace %q", namespace)
	}
	return out, nil
}

// decode decodes a stored record of namespace at version v, logging and
// skipping one that does not decode.
func (s *Revokes) decode(namespace string, v int64, body []byte) (stemtype.RevokeRecord, bool) {
	var r stemtype.RevokeRecord
	if err := json.Unmarshal(body, &r); err != nil {
		s.log.Warn("stem: postgres revokes: skipping an undecodable record", "namespace", namespace, "error", err.Error())
		return r, false
	}
	r.Version = v
	return r, true
}

// ListChanges returns the records of namespace written since cursor and
// the cursor to pass next time (stemdriver.RevokeChangeLister).
//
// A sequence number would not do: the transaction that took number 10 may
// commit after the one that took 11 was listed, and "after 11" would miss
// it for ever. So every row carries the id of the transaction that wrote
// it last (the column xid, set by a trigger on every insert and update),
// and a cursor is the snapshot of the listing's own statement
// (pg_current_snapshot: the transactions finished then, those in progress,
// and where the ids not begun yet start). The rows written since are those
// whose transaction that snapshot does not see, read from the
// (namespace, xid) index from the snapshot's xmin on: a transaction in
// progress at one listing is listed by the first listing after its
// commit, however its id compares with those listed already, and a row
// listed once is not listed again until it is written again.
//
// A cursor is "<epoch>/<snapshot>", the epoch naming the server (its
// system identifier and timeline) and the table (its oid). With "", a
// cursor of another epoch (another server, a failover or a point-in-time
// recovery since, the schema dropped and created again), one whose
// snapshot is ahead of the server's, one it cannot read, or any cursor on
// a standby, it lists every record, with a cursor of the same statement's
// snapshot. A server that refuses the listing's statement (a function it
// lacks, or that the user may not execute) gets every record read with
// List, and a warning logged once.
func (s *Revokes) ListChanges(ctx context.Context, namespace, cursor string) ([]stemtype.RevokeRecord, string, error) {
	if err := s.checkOpen(); err != nil {
		return nil, "", err
	}
	if epoch, snap, ok := parseRevokeCursor(cursor); ok {
		recs, next, applied, err := s.listAt(ctx, namespace, s.s.q.revokeChanges, s.s.q.revokesTable, epoch, snap)
		if err == nil && applied {
			return recs, next, nil
		}
		if err != nil && !refusedStatement(err) {
			return nil, "", err
		}
	}
	recs, next, _, err := s.listAt(ctx, namespace, s.s.q.listRevokesAt, s.s.q.revokesTable)
	if err == nil || !refusedStatement(err) {
		return recs, next, err
	}
	// The server refused the listing's own statement: a server that does
	// not offer, or does not let this user execute, a function the epoch
	// or the snapshot needs (pg_control_system, pg_walfile_name,
	// pg_current_snapshot: a hardened or a Postgres-compatible server).
	// Its revokes are then read whole, as before change listing, rather
	// than not at all.
	if s.changesRefused.CompareAndSwap(false, true) {
		s.log.Warn("stem: postgres revokes: the server refused the change listing; reading every record at each re-sync instead",
			"namespace", namespace, "error", err.Error())
	}
	recs, err = s.List(ctx, namespace)
	if err != nil {
		return nil, "", err
	}
	return recs, wholeCursor, nil
}

// wholeCursor is the cursor ListChanges returns when it read every record
// with List: no cursor of a listing, so the next call lists everything too.
const wholeCursor = "whole"

// refusedStatement reports whether err is the server refusing a statement
// (an SQL error: a missing function, a privilege), not a lost connection.
func refusedStatement(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && !strings.HasPrefix(pe.Code, "08") && !strings.HasPrefix(pe.Code, "57")
}

// listAt runs sql, listRevokesAt or revokeChanges, with namespace then
// args, and returns the records listed, the cursor of the statement's
// snapshot, and whether the statement applied the cursor given.
func (s *Revokes) listAt(ctx context.Context, namespace, sql string, args ...any) ([]stemtype.RevokeRecord, string, bool, error) {
	fail := func(err error) ([]stemtype.RevokeRecord, string, bool, error) {
		return nil, "", false, s.errorf(err, "list revoke changes of namespace %q", namespace)
	}
	rows, err := s.s.pool.Query(ctx, sql, append([]any{namespace}, args...)...)
	if err != nil {
		return fail(err)
	}
	defer rows.Close()
	var out []stemtype.RevokeRecord
	var next string
	applied := false
	for rows.Next() {
		var epoch, snap *string
		var ok *bool
		var v *int64
		var body []byte
		if err := rows.Scan(&epoch, &snap, &ok, &v, &body); err != nil {
			return fail(err)
		}
		if v == nil {
			// The statement's own row: its epoch and snapshot.
			if epoch == nil || snap == nil || ok == nil {
				return fail(errors.New("the listing's epoch or snapshot is NULL"))
			}
			next, applied = *epoch+"/"+*snap, *ok
			continue
		}
		if r, ok := s.decode(namespace, *v, body); ok {
			out = append(out, r)
		}
	}
	if err := rows.Err(); err != nil {
		return fail(err)
	}
	if next == "" {
		return fail(errors.New("the listing returned no snapshot"))
	}
	return out, next, applied, nil
}

// parseRevokeCursor splits a cursor of ListChanges into its epoch and its
// snapshot ("xmin:xmax:xip,...", as pg_snapshot prints it), and reports
// whether it is one: the snapshot is checked as Postgres checks its input
// (0 < xmin <= xmax, the ids in progress ascending, in [xmin, xmax)), so
// that a malformed cursor lists everything instead of failing the
// statement.
func parseRevokeCursor(cursor string) (epoch, snap string, ok bool) {
	epoch, snap, ok = strings.Cut(cursor, "/")
	if !ok || epoch == "" {
		return "", "", false
	}
	parts := strings.Split(snap, ":")
	if len(parts) != 3 {
		return "", "", false
	}
	xmin, err1 := strconv.ParseUint(parts[0], 10, 64)
	xmax, err2 := strconv.ParseUint(parts[1], 10, 64)
	if err1 != nil || err2 != nil || xmin == 0 || xmax < xmin {
		return "", "", false
	}
	if parts[2] != "" {
		last := uint64(0)
		for _, f := range strings.Split(parts[2], ",") {
			x, err := strconv.ParseUint(f, 10, 64)
			if err != nil || x < xmin || x >= xmax || x <= last {
				return "", "", false
			}
			last = x
		}
	}
	return epoch, snap, true
}

// Prune deletes the namespace's records that expired at or before the
// server's now (now is ignored, so that workers whose clocks disagree prune
// alike) and returns how many it deleted. It leaves a tombstone of each in
// stem_revoke_tombstones, and first deletes the namespace's tombstones
// older than stemdriver.RevokeTombstoneRetention.
func (s *Revokes) Prune(ctx context.Context, namespace string, _ time.Time) (int, error) {
	if err := s.checkOpen(); err != nil {
		return 0, err
	}
	if _, err := s.s.pool.Exec(ctx, s.s.q.pruneTombstones, namespace); err != nil {
		return 0, s.errorf(err, "prune revoke tombstones of namespace %q", namespace)
	}
	var n int64
	if err := s.s.pool.QueryRow(ctx, s.s.q.pruneRevokes, namespace, stemdriver.RevokeTombstoneRetention.Microseconds()).Scan(&n); err != nil {
		return 0, s.errorf(err, "prune revokes of namespace %q", namespace)
	}
	return int(n), nil
}

// Close releases the store's share of the connection pool.
func (s *Revokes) Close() error {
	s.closeRole()
	return nil
}
