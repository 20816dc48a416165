package stemsqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// Revokes is a stemdriver.RevokeStore on a SQLite file: one row of
// stem_revokes per namespace and task. It serves every namespace (records
// carry theirs). It lists changes since a cursor
// (stemdriver.RevokeChangeLister). It is safe for concurrent use, from any
// number of processes.
type Revokes struct {
	*role
}

var (
	_ stemdriver.RevokeStore        = (*Revokes)(nil)
	_ stemdriver.RevokeChangeLister = (*Revokes)(nil)
)

// OpenRevokes opens the SQLite file of url (sqlite://PATH, see the package
// documentation) and returns its revoke store. opts.Namespace is not used:
// records carry their namespace.
func OpenRevokes(ctx context.Context, url string, opts stemdriver.Options) (*Revokes, error) {
	r, _, err := open(ctx, url, opts, "revokes")
	if err != nil {
		return nil, err
	}
	return &Revokes{role: r}, nil
}

// The revoke store's write statements (see writeQueries).
var (
	qRevokeGet  = wq(`SELECT version FROM stem_revokes WHERE namespace = ?1 AND task_id = ?2`)
	qRevokeTomb = wq(`SELECT version FROM stem_revoke_tombstones WHERE namespace = ?1 AND task_id = ?2`)
	qRevokeLive = wq(`DELETE FROM stem_revoke_tombstones WHERE namespace = ?1 AND task_id = ?2`)
	qRevokePut  = wq(`INSERT INTO stem_revokes (namespace, task_id, version, expires_at, body, seq)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT (namespace, task_id) DO UPDATE SET
	version = excluded.version, expires_at = excluded.expires_at, body = excluded.body, seq = excluded.seq`)
	qRevokeSeq    = wq(`SELECT seq FROM stem_revoke_changes WHERE id = 1`)
	qRevokeSeqSet = wq(`UPDATE stem_revoke_changes SET seq = ?1 WHERE id = 1`)
	// qRevokeSeqNew creates the change counter anew, with a new epoch, when
	// its row is missing (deleted by hand: the migration creates it), so
	// that every cursor issued before lists everything. It starts after
	// the highest seq stored, keeping the order of what is kept.
	qRevokeSeqNew = wq(`INSERT INTO stem_revoke_changes (id, epoch, seq)
SELECT 1, lower(hex(randomblob(16))), coalesce(max(seq), 0) FROM stem_revokes
RETURNING seq`)
)

// Upsert stores every record, each with version max(stored+1, proposed),
// in one write transaction (so each record's read and write are one atomic
// step against every other writer, in any process), and returns them in
// input order with the versions they were stored with; a record that a
// pruned record's tombstone supersedes is not stored and comes back with
// Version 0. A call that cannot
// be applied whole (a task at the highest version) changes nothing. Each
// record stored takes the next number of the file's change sequence
// (ListChanges), from the counter read and written in the same
// transaction: the transaction holds the file's write lock from its BEGIN
// (IMMEDIATE), so no writer of any process numbers a change between the
// read and the write, and numbers follow commit order.
func (s *Revokes) Upsert(ctx context.Context, recs ...stemtype.RevokeRecord) ([]stemtype.RevokeRecord, error) {
	if err := s.check(ctx, "upsert"); err != nil {
		return nil, err
	}
	for i := range recs {
		if err := recs[i].Validate(); err != nil {
			return nil, fmt.Errorf("stem: sqlite revokes upsert: record %d: %w", i, err)
		}
	}
	if len(recs) == 0 {
		return []stemtype.RevokeRecord{}, nil
	}
	out := slices.Clone(recs)
	var full error // a record that cannot take a higher version
	err := s.st.writeTx(ctx, s.logger, "revoke upsert", func(tx *sql.Tx) error {
		copy(out, recs)
		full = nil
		get, err := s.st.txPrepare(ctx, tx, qRevokeGet)
		if err != nil {
			return err
		}
		put, err := s.st.txPrepare(ctx, tx, qRevokePut)
		if err != nil {
			return err
		}
		tomb, err := s.st.txPrepare(ctx, tx, qRevokeTomb)
		if err != nil {
			return err
		}
		live, err := s.st.txPrepare(ctx, tx, qRevokeLive)
		if err != nil {
			return err
		}
		base, err := s.changeCounter(ctx, tx)
		if err != nil {
			return err
		}
		seq := base
		for i := range out {
			rec := &out[i]
			var stored int64
			err := get.QueryRowContext(ctx, rec.Namespace, rec.TaskID).Scan(&stored)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				var pruned int64
				switch err := tomb.QueryRowContext(ctx, rec.Namespace, rec.TaskID).Scan(&pruned); {
				case errors.Is(err, sql.ErrNoRows):
				case err != nil:
					return err
				case rec.Version <= pruned:
					rec.Version = 0 // a late write of a pruned revoke: ignored
					continue
				default:
					if _, err := live.ExecContext(ctx, rec.Namespace, rec.TaskID); err != nil {
						return err
					}
				}
			case err != nil:
				return err
			case stored == math.MaxInt64:
				full = fmt.Errorf("stem: sqlite revokes upsert: task %q in namespace %q is stored at the highest version, %d",
					rec.TaskID, rec.Namespace, stored)
				return full // rolls the whole call back
			default:
				rec.Version = max(rec.Version, stored+1)
			}
			body, err := json.Marshal(rec)
			if err != nil {
				return fmt.Errorf("encode record of task %q: %w", rec.TaskID, err)
			}
			seq++
			if _, err := put.ExecContext(ctx, rec.Namespace, rec.TaskID, rec.Version, nanos(rec.ExpiresAt), body, seq); err != nil {
				return err
			}
		}
		if seq == base {
			return nil // nothing stored: no change to count
		}
		_, err = s.st.txExec(ctx, tx, qRevokeSeqSet, seq)
		return err
	})
	if full != nil {
		return nil, full
	}
	if err != nil {
		return nil, s.errorf(err, "upsert %d records (first task %q)", len(recs), recs[0].TaskID)
	}
	return out, nil
}

// changeCounter returns the last number of the change sequence, in tx (a
// write transaction), creating the counter anew when its row is missing.
func (s *Revokes) changeCounter(ctx context.Context, tx *sql.Tx) (int64, error) {
	get, err := s.st.txPrepare(ctx, tx, qRevokeSeq)
	if err != nil {
		return 0, err
	}
	var seq int64
	err = get.QueryRowContext(ctx).Scan(&seq)
	if !errors.Is(err, sql.ErrNoRows) {
		return seq, err
	}
	s.logger.WarnContext(ctx, "stem: sqlite revokes: the change counter (stem_revoke_changes) was missing; created it with a new epoch, so workers read every record once",
		"path", s.st.path)
	create, err := s.st.txPrepare(ctx, tx, qRevokeSeqNew)
	if err != nil {
		return 0, err
	}
	err = create.QueryRowContext(ctx).Scan(&seq)
	return seq, err
}

// The revoke store's read statements.
const (
	qRevokeList    = `SELECT task_id, body FROM stem_revokes WHERE namespace = ?1 ORDER BY task_id`
	qRevokeChanges = `SELECT task_id, body FROM stem_revokes WHERE namespace = ?1 AND seq > ?2 ORDER BY seq`
	qRevokeCounter = `SELECT epoch, seq FROM stem_revoke_changes WHERE id = 1`
)

// List returns every stored record of namespace, expired ones included
// until pruned, ordered by task id.
func (s *Revokes) List(ctx context.Context, namespace string) ([]stemtype.RevokeRecord, error) {
	if err := s.check(ctx, "list"); err != nil {
		return nil, err
	}
	out, err := s.scanRecords(ctx, namespace, s.st.read, qRevokeList, namespace)
	if err != nil {
		return nil, s.errorf(err, "list records of namespace %q", namespace)
	}
	return out, nil
}

// ListChanges returns the records of namespace written since cursor, in the
// order they were written, and the cursor to pass next time
// (stemdriver.RevokeChangeLister): one read of the index of (namespace,
// seq), so that a re-sync with nothing changed reads no record.
//
// A cursor is "EPOCH:SEQ": the file's epoch (drawn when its schema reached
// version 3) and the last number of its change sequence. The records and
// the next cursor come from one read transaction, one snapshot of the
// file, and numbers follow commit order (see Upsert), so every record
// written after that snapshot has a higher number: the next call lists it.
// The sequence is the file's, not a namespace's, so a cursor counts
// changes in whichever namespace it is used with. With "", a cursor it
// cannot read, one of another epoch (another file, or this path's file
// deleted and created again) or one past the file's counter (a file put
// back from a copy), it lists every record, as List does. Prune deletes
// records without numbering anything: a pruned record is not listed.
func (s *Revokes) ListChanges(ctx context.Context, namespace, cursor string) ([]stemtype.RevokeRecord, string, error) {
	if err := s.check(ctx, "list changes"); err != nil {
		return nil, "", err
	}
	epoch, since, parsed := parseRevokeCursor(cursor)
	var out []stemtype.RevokeRecord
	next := ""
	err := func() error {
		// A read transaction begun DEFERRED: its snapshot is taken at
		// its first read and kept to its end, so the counter and the
		// records are of one moment.
		tx, err := s.st.read.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback() }()
		var fileEpoch string
		var seq int64
		switch err := tx.QueryRowContext(ctx, qRevokeCounter).Scan(&fileEpoch, &seq); {
		case errors.Is(err, sql.ErrNoRows):
			// The counter's row was deleted by hand: nothing tells
			// what changed, so every record is listed, and the next
			// cursor, of no epoch, lists them all again until an
			// Upsert creates the counter anew.
			next = noRevokeEpoch + ":0"
			out, err = s.scanRecords(ctx, namespace, tx, qRevokeList, namespace)
			return err
		case err != nil:
			return err
		}
		next = fileEpoch + ":" + strconv.FormatInt(seq, 10)
		if parsed && epoch == fileEpoch && since <= seq {
			out, err = s.scanRecords(ctx, namespace, tx, qRevokeChanges, namespace, since)
			return err
		}
		out, err = s.scanRecords(ctx, namespace, tx, qRevokeList, namespace)
		return err
	}()
	if err != nil {
		return nil, "", s.errorf(err, "list changes of namespace %q since cursor %q", namespace, cursor)
	}
	return out, next, nil
}

// noRevokeEpoch is the epoch of the cursor ListChanges returns when the
// file has no change counter: never a file's epoch (those are hex), so
// the cursor always lists everything.
const noRevokeEpoch = "none"

// parseRevokeCursor splits a ListChanges cursor into its epoch and
// sequence number, reporting whether it is one ListChanges could have
// issued.
func parseRevokeCursor(cursor string) (epoch string, seq int64, ok bool) {
	epoch, num, ok := strings.Cut(cursor, ":")
	if !ok || epoch == "" || epoch == noRevokeEpoch {
		return "", 0, false
	}
	seq, err := strconv.ParseInt(num, 10, 64)
	if err != nil || seq < 0 {
		return "", 0, false
	}
	return epoch, seq, true
}

// querier is what scanRecords reads with: the read pool, or a read
// transaction of it.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// scanRecords runs query (rows of task_id and body) and decodes the
// records, in the rows' order.
func (s *Revokes) scanRecords(ctx context.Context, namespace string, q querier, query string, args ...any) ([]stemtype.RevokeRecord, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []stemtype.RevokeRecord{}
	for rows.Next() {
		var id string
		var body []byte
		if err := rows.Scan(&id, &body); err != nil {
			return nil, err
		}
		var rec stemtype.RevokeRecord
		if err := json.Unmarshal(body, &rec); err != nil {
			// One bad record loses nothing else: skipped, kept, and
			// named, as the other stores do.
			s.logger.WarnContext(ctx, "stem: sqlite revokes: skipping an undecodable record",
				"path", s.st.path, "namespace", namespace, "task_id", id, "error", err.Error())
			continue
		}
		out = append(out, rec)
	}
	return out, rows.Err()
}

// Prune's statements: each finds what expired by the index of (namespace,
// expires_at), so that a prune with nothing to do, at every re-sync of
// every worker, reads no record.
var (
	qRevokeTombsPrune = wq(`DELETE FROM stem_revoke_tombstones WHERE namespace = ?1 AND expires_at <= ?2`)
	qRevokeBury       = wq(`INSERT INTO stem_revoke_tombstones (namespace, task_id, version, expires_at)
SELECT namespace, task_id, version, ?3 FROM stem_revokes WHERE namespace = ?1 AND expires_at > 0 AND expires_at <= ?2
ON CONFLICT (namespace, task_id) DO UPDATE SET version = max(version, excluded.version), expires_at = excluded.expires_at`)
	qRevokePrune = wq(`DELETE FROM stem_revokes WHERE namespace = ?1 AND expires_at > 0 AND expires_at <= ?2`)
)

// Prune deletes the records of namespace that expired at or before now,
// leaving a tombstone of each in stem_revoke_tombstones, and deletes the
// namespace's tombstones older than stemdriver.RevokeTombstoneRetention. A
// file has no clock of its own, so the caller's now is the clock.
func (s *Revokes) Prune(ctx context.Context, namespace string, now time.Time) (int, error) {
	if err := s.check(ctx, "prune"); err != nil {
		return 0, err
	}
	var n int64
	err := s.st.writeTx(ctx, s.logger, "revoke prune", func(tx *sql.Tx) error {
		if _, err := s.st.txExec(ctx, tx, qRevokeTombsPrune, namespace, nanos(now)); err != nil {
			return err
		}
		if _, err := s.st.txExec(ctx, tx, qRevokeBury, namespace, nanos(now), nanos(now.Add(stemdriver.RevokeTombstoneRetention))); err != nil {
			return err
		}
		res, err := s.st.txExec(ctx, tx, qRevokePrune, namespace, nanos(now))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, s.errorf(err, "prune records of namespace %q", namespace)
	}
	return int(n), nil
}

// Close closes s. Operations after Close return an error matching
// stemdriver.ErrClosed. Close is safe to call more than once.
func (s *Revokes) Close() error { return s.close() }
