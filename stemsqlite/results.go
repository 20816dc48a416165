package stemsqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// Results is a stemdriver.ResultBackend on a SQLite file: one row of
// stem_results per task, kept for the URL's result_ttl. It implements
// stemdriver.FinalGetter and stemdriver.ConditionalPutter. It is safe for
// concurrent use, from any number of processes.
type Results struct {
	*role
	ttl time.Duration
}

var (
	_ stemdriver.ResultBackend     = (*Results)(nil)
	_ stemdriver.FinalGetter       = (*Results)(nil)
	_ stemdriver.ConditionalPutter = (*Results)(nil)
)

// OpenResults opens the SQLite file of url (sqlite://PATH[?result_ttl=D],
// see the package documentation) and returns a result backend for
// opts.Namespace.
func OpenResults(ctx context.Context, url string, opts stemdriver.Options) (*Results, error) {
	r, cfg, err := open(ctx, url, opts, "results")
	if err != nil {
		return nil, err
	}
	return &Results{role: r, ttl: cfg.resultTTL}, nil
}

// putResult upserts a result unless the stored one of its id is final (and
// not yet expired): the check and the write are one statement.
var putResult = wq(`INSERT INTO stem_results (namespace, id, state, final, body, expires_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT (namespace, id) DO UPDATE SET
	state = excluded.state, final = excluded.final, body = excluded.body, expires_at = excluded.expires_at
WHERE stem_results.final = 0 OR (stem_results.expires_at > 0 AND stem_results.expires_at <= ?7)`)

// expiry returns when a result written at now expires (ns; 0 never).
func (r *Results) expiry(now time.Time) int64 {
	if r.ttl <= 0 {
		return 0
	}
	return nanos(now.Add(r.ttl))
}

// encode checks and encodes a result.
func encodeResult(res *stemtype.TaskResult) ([]byte, error) {
	if res == nil || res.ID == "" {
		return nil, errors.New("stem: sqlite results put: result is nil or has no id")
	}
	raw, err := res.AppendJSON(nil)
	if err != nil {
		return nil, fmt.Errorf("stem: sqlite results put: encode result %s: %w", res.ID, err)
	}
	return raw, nil
}

func finalFlag(s stemtype.State) int {
	if s.Final() {
		return 1
	}
	return 0
}

// Put stores every result in one transaction, each replacing the stored
// record of its id unless that one is final (the write is then skipped).
func (r *Results) Put(ctx context.Context, results ...*stemtype.TaskResult) error {
	if err := r.check(ctx, "put"); err != nil {
		return err
	}
	raws := make([][]byte, len(results))
	for i, res := range results {
		raw, err := encodeResult(res)
		if err != nil {
			return err
		}
		raws[i] = raw
	}
	if len(results) == 0 {
		return nil
	}
	now := time.Now()
	exp, n := r.expiry(now), nanos(now)
	err := r.st.writeTx(ctx, r.logger, "put results", func(tx *sql.Tx) error {
		stmt, err := r.st.txPrepare(ctx, tx, putResult)
		if err != nil {
			return err
		}
		for i, res := range results {
			if _, err := stmt.ExecContext(ctx, r.ns, res.ID, string(res.State), finalFlag(res.State), raws[i], exp, n); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return r.errorf(err, "put %d results (first %s)", len(results), results[0].ID)
	}
	return nil
}

// PutIfState stores res only while the stored result of its id is in one
// of states, and never over a final state, in one statement; it implements
// stemdriver.ConditionalPutter.
func (r *Results) PutIfState(ctx context.Context, res *stemtype.TaskResult, states ...stemtype.State) (bool, error) {
	if err := r.check(ctx, "put"); err != nil {
		return false, err
	}
	raw, err := encodeResult(res)
	if err != nil {
		return false, err
	}
	names, err := json.Marshal(states)
	if err != nil {
		return false, fmt.Errorf("stem: sqlite results put: encode states: %w", err)
	}
	now := time.Now()
	var stored int64
	err = r.st.writeTx(ctx, r.logger, "conditional put", func(tx *sql.Tx) error {
		out, err := tx.ExecContext(ctx, `UPDATE stem_results
SET state = ?3, final = ?4, body = ?5, expires_at = ?6
WHERE namespace = ?1 AND id = ?2 AND final = 0 AND (expires_at = 0 OR expires_at > ?7)
	AND state IN (SELECT value FROM json_each(?8))`,
			r.ns, res.ID, string(res.State), finalFlag(res.State), raw, r.expiry(now), nanos(now), string(names))
		if err != nil {
			return err
		}
		stored, err = out.RowsAffected()
		return err
	})
	if err != nil {
		return false, r.errorf(err, "conditional put of result %s", res.ID)
	}
	return stored == 1, nil
}

// Get returns the stored result of id, or an error matching
// stemdriver.ErrNotFound when there is none (or it expired).
func (r *Results) Get(ctx context.Context, id string) (*stemtype.TaskResult, error) {
	if err := r.check(ctx, "get"); err != nil {
		return nil, err
	}
	var raw []byte
	err := r.st.read.QueryRowContext(ctx, `SELECT body FROM stem_results
WHERE namespace = ?1 AND id = ?2 AND (expires_at = 0 OR expires_at > ?3)`, r.ns, id, nanos(time.Now())).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("stem: sqlite results: result %s: %w", id, stemdriver.ErrNotFound)
	}
	if err != nil {
		return nil, r.errorf(err, "get result %s", id)
	}
	return decodeResult(id, raw)
}

// GetMany returns the stored results of ids in order, nil for an id with
// none, with one query.
func (r *Results) GetMany(ctx context.Context, ids ...string) ([]*stemtype.TaskResult, error) {
	return r.getMany(ctx, false, ids)
}

// GetFinalMany returns, in order, the final result of each id (succeeded,
// failed or cancelled), nil for an id with none, with one query that reads
// only final rows; it implements stemdriver.FinalGetter.
func (r *Results) GetFinalMany(ctx context.Context, ids ...string) ([]*stemtype.TaskResult, error) {
	return r.getMany(ctx, true, ids)
}

func (r *Results) getMany(ctx context.Context, finalOnly bool, ids []string) ([]*stemtype.TaskResult, error) {
	if err := r.check(ctx, "get"); err != nil {
		return nil, err
	}
	out := make([]*stemtype.TaskResult, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	list, err := json.Marshal(ids)
	if err != nil {
		return nil, fmt.Errorf("stem: sqlite results get: encode ids: %w", err)
	}
	rows, err := r.st.read.QueryContext(ctx, `SELECT id, body FROM stem_results
WHERE namespace = ?1 AND id IN (SELECT value FROM json_each(?2))
	AND (expires_at = 0 OR expires_at > ?3) AND final >= ?4`, r.ns, string(list), nanos(time.Now()), finalFlagBool(finalOnly))
	if err != nil {
		return nil, r.errorf(err, "get %d results (first %s)", len(ids), ids[0])
	}
	defer rows.Close()
	found := make(map[string][]byte, len(ids))
	for rows.Next() {
		var id string
		var raw []byte
		if err := rows.Scan(&id, &raw); err != nil {
			return nil, r.errorf(err, "get %d results (first %s)", len(ids), ids[0])
		}
		found[id] = raw
	}
	if err := rows.Err(); err != nil {
		return nil, r.errorf(err, "get %d results (first %s)", len(ids), ids[0])
	}
	for i, id := range ids {
		if raw, ok := found[id]; ok {
			if out[i], err = decodeResult(id, raw); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

func finalFlagBool(b bool) int {
	if b {
		return 1
	}
	return 0
}

// decodeResult decodes a stored result of id.
func decodeResult(id string, raw []byte) (*stemtype.TaskResult, error) {
	var res stemtype.TaskResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("stem: sqlite results: result %s: stored value does not decode: %w", id, err)
	}
	return &res, nil
}

// Close closes r. Operations after Close return an error matching
// stemdriver.ErrClosed. The file's handle closes with the last driver open
// on it. Close is safe to call more than once.
func (r *Results) Close() error { return r.close() }
