package stemsqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// Revokes is a stemdriver.RevokeStore on a SQLite file: one row of
// stem_revokes per namespace and task. It serves every namespace (records
// carry theirs). It is safe for concurrent use, from any number of
// processes.
type Revokes struct {
	*role
}

var _ stemdriver.RevokeStore = (*Revokes)(nil)

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
	qRevokePut  = wq(`INSERT INTO stem_revokes (namespace, task_id, version, expires_at, body)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (namespace, task_id) DO UPDATE SET
	version = excluded.version, expires_at = excluded.expires_at, body = excluded.body`)
)

// Upsert stores every record, each with version max(stored+1, proposed),
// in one write transaction (so each record's read and write are one atomic
// step against every other writer, in any process), and returns them in
// input order with the versions they were stored with; a record that a
// pruned record's tombstone supersedes is not stored and comes back with
// Version 0. A call that cannot
// be applied whole (a task at the highest version) changes nothing.
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
			if _, err := put.ExecContext(ctx, rec.Namespace, rec.TaskID, rec.Version, nanos(rec.ExpiresAt), body); err != nil {
				return err
			}
		}
		return nil
	})
	if full != nil {
		return nil, full
	}
	if err != nil {
		return nil, s.errorf(err, "upsert %d records (first task %q)", len(recs), recs[0].TaskID)
	}
	return out, nil
}

// List returns every stored record of namespace, expired ones included
// until pruned, ordered by task id.
func (s *Revokes) List(ctx context.Context, namespace string) ([]stemtype.RevokeRecord, error) {
	if err := s.check(ctx, "list"); err != nil {
		return nil, err
	}
	rows, err := s.st.read.QueryContext(ctx, `SELECT task_id, body FROM stem_revokes WHERE namespace = ?1 ORDER BY task_id`, namespace)
	if err != nil {
		return nil, s.errorf(err, "list records of namespace %q", namespace)
	}
	defer rows.Close()
	out := []stemtype.RevokeRecord{}
	for rows.Next() {
		var id string
		var body []byte
		if err := rows.Scan(&id, &body); err != nil {
			return nil, s.errorf(err, "list records of namespace %q", namespace)
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
	if err := rows.Err(); err != nil {
		return nil, s.errorf(err, "list records of namespace %q", namespace)
	}
	return out, nil
}

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
		if _, err := tx.ExecContext(ctx, `DELETE FROM stem_revoke_tombstones WHERE namespace = ?1 AND expires_at <= ?2`,
			namespace, nanos(now)); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO stem_revoke_tombstones (namespace, task_id, version, expires_at)
SELECT namespace, task_id, version, ?3 FROM stem_revokes WHERE namespace = ?1 AND expires_at > 0 AND expires_at <= ?2
ON CONFLICT (namespace, task_id) DO UPDATE SET version = max(version, excluded.version), expires_at = excluded.expires_at`,
			namespace, nanos(now), nanos(now.Add(stemdriver.RevokeTombstoneRetention))); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM stem_revokes WHERE namespace = ?1 AND expires_at > 0 AND expires_at <= ?2`,
			namespace, nanos(now))
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
