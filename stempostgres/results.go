package stempostgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// pruneEvery is how often a process deletes expired results (and the
// control plane's old messages and replies).
const pruneEvery = time.Minute

// Results is a stemdriver.ResultBackend on Postgres: one row per task in
// stem_results, written by an upsert whose WHERE keeps final states final,
// and deleted after the retention TTL by a periodic prune. It is safe for
// concurrent use.
type Results struct {
	role
	db     db
	ttl    time.Duration
	parent *Results

	pruneMu   sync.Mutex
	lastPrune time.Time
}

var (
	_ stemdriver.ResultBackend     = (*Results)(nil)
	_ stemdriver.ConditionalPutter = (*Results)(nil)
	_ stemdriver.FinalGetter       = (*Results)(nil)
)

// OpenResults connects to the Postgres server at url, migrates its schema
// when needed, and returns a result backend for opts.Namespace. The URL's
// result_ttl option sets how long a result is kept after its last write
// (default DefaultResultTTL; 0 keeps results forever).
func OpenResults(ctx context.Context, url string, opts stemdriver.Options) (*Results, error) {
	s, cfg, err := openShared(ctx, url, opts)
	if err != nil {
		return nil, err
	}
	return &Results{role: role{s: s, name: "results", ns: cfg.namespace, log: cfg.logger}, db: s.pool, ttl: cfg.resultTTL, lastPrune: time.Now()}, nil
}

// InTx returns a view of r that writes (and reads) in tx, the caller's
// transaction, so that a pending result recorded with a task published
// through (*Broker).InTx exists if and only if tx commits. The view's Close
// does nothing; it must not be used after tx ends.
func (r *Results) InTx(tx pgx.Tx) stemdriver.ResultBackend {
	return &Results{role: role{s: r.s, name: "results (in transaction)", ns: r.ns, log: r.log}, db: tx, ttl: r.ttl, parent: r}
}

func (r *Results) checkOpen() error {
	if r.parent != nil {
		return r.parent.checkOpen()
	}
	return r.role.checkOpen()
}

// ttlMicros is the retention in microseconds, 0 for none; a positive TTL
// below a microsecond counts as one.
func (r *Results) ttlMicros() int64 {
	if r.ttl <= 0 {
		return 0
	}
	return max(r.ttl.Microseconds(), 1)
}

// encodeResult checks and encodes one result.
func encodeResult(res *stemtype.TaskResult) ([]byte, error) {
	if res == nil || res.ID == "" {
		return nil, errors.New("stem: postgres results: put: result is nil or has no id")
	}
	raw, err := res.AppendJSON(nil)
	if err != nil {
		return nil, fmt.Errorf("stem: postgres results: put: encode result %s: %w", res.ID, err)
	}
	return raw, nil
}

// Put upserts results, final states final: one INSERT ... ON CONFLICT DO
// UPDATE ... WHERE the stored state is not final (or expired) per run of
// results without a repeated id (an id given twice starts the next run,
// applied after); usually one statement.
func (r *Results) Put(ctx context.Context, results ...*stemtype.TaskResult) error {
	if err := r.checkOpen(); err != nil {
		return err
	}
	if len(results) == 0 {
		return nil
	}
	groups, err := resultGroups(results)
	if err != nil {
		return err
	}
	ttl := r.ttlMicros()
	// Runs go one statement (one transaction) each: runs of one call in
	// one transaction could deadlock with another call's.
	for _, g := range groups {
		if _, err := r.db.Exec(ctx, r.s.q.putResults, r.ns, g.ids, g.states, g.bodies, ttl); err != nil {
			return r.errorf(err, "put %d results (first %s)", len(results), results[0].ID)
		}
	}
	r.maybePrune()
	return nil
}

// maybePrune deletes expired results in the background at most once a
// minute per Results, the first a minute after it opened.
func (r *Results) maybePrune() {
	if r.parent != nil || r.ttl <= 0 {
		return
	}
	r.pruneMu.Lock()
	if time.Since(r.lastPrune) < pruneEvery {
		r.pruneMu.Unlock()
		return
	}
	r.lastPrune = time.Now()
	r.pruneMu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := r.Prune(ctx); err != nil && !r.closed.Load() {
			r.log.Warn("stem: postgres results: prune expired results", "error", err.Error())
		}
	}()
}

// Prune deletes every expired result of the schema (all namespaces) now
// and returns how many it deleted. Put calls it in the background once a
// minute; a deployment may call it from a cron job instead.
func (r *Results) Prune(ctx context.Context) (int64, error) {
	if err := r.checkOpen(); err != nil {
		return 0, err
	}
	tag, err := r.db.Exec(ctx, r.s.q.pruneResults)
	if err != nil {
		return 0, r.errorf(err, "prune expired results")
	}
	return tag.RowsAffected(), nil
}

// PutIfState stores res only while the stored result of its id is in one
// of states and not final, in one UPDATE; it implements
// stemdriver.ConditionalPutter.
func (r *Results) PutIfState(ctx context.Context, res *stemtype.TaskResult, states ...stemtype.State) (bool, error) {
	if err := r.checkOpen(); err != nil {
		return false, err
	}
	raw, err := encodeResult(res)
	if err != nil {
		return false, err
	}
	ss := make([]string, len(states))
	for i, st := range states {
		ss[i] = string(st)
	}
	tag, err := r.db.Exec(ctx, r.s.q.putIfState, r.ns, res.ID, string(res.State), raw, r.ttlMicros(), ss)
	if err != nil {
		return false, r.errorf(err, "conditional put of result %s", res.ID)
	}
	return tag.RowsAffected() == 1, nil
}

// Get returns the stored result of id, or an error matching
// stemdriver.ErrNotFound.
func (r *Results) Get(ctx context.Context, id string) (*stemtype.TaskResult, error) {
	rs, err := r.GetMany(ctx, id)
	if err != nil {
		return nil, err
	}
	if rs[0] == nil {
		return nil, fmt.Errorf("stem: postgres results: result %s: %w", id, stemdriver.ErrNotFound)
	}
	return rs[0], nil
}

// GetMany returns the stored results of ids in input order, nil for those
// with none, in one query.
func (r *Results) GetMany(ctx context.Context, ids ...string) ([]*stemtype.TaskResult, error) {
	return r.getMany(ctx, r.s.q.getResults, "get", ids)
}

// GetFinalMany returns, in input order, the stored results of ids whose
// state is final, nil for the others, in one query; it implements
// stemdriver.FinalGetter.
func (r *Results) GetFinalMany(ctx context.Context, ids ...string) ([]*stemtype.TaskResult, error) {
	return r.getMany(ctx, r.s.q.getFinals, "get final", ids)
}

func (r *Results) getMany(ctx context.Context, sql, what string, ids []string) ([]*stemtype.TaskResult, error) {
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	out := make([]*stemtype.TaskResult, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := r.db.Query(ctx, sql, r.ns, ids)
	if err != nil {
		return nil, r.errorf(err, "%s %d results (first %s)", what, len(ids), ids[0])
	}
	byID := make(map[string]*stemtype.TaskResult, len(ids))
	for rows.Next() {
		var id string
		var body []byte
		if err := rows.Scan(&id, &body); err != nil {
			rows.Close()
			return nil, r.errorf(err, "%s %d results (first %s)", what, len(ids), ids[0])
		}
		var res stemtype.TaskResult
		if err := json.Unmarshal(body, &res); err != nil {
			rows.Close()
			return nil, fmt.Errorf("stem: postgres results: result %s: undecodable record: %w", id, err)
		}
		byID[id] = &res
	}
	if err := rows.Err(); err != nil {
		return nil, r.errorf(err, "%s %d results (first %s)", what, len(ids), ids[0])
	}
	used := make(map[string]bool, len(byID))
	for i, id := range ids {
		if res := byID[id]; res != nil {
			if used[id] { // an id asked twice gets two values
				c := *res
				res = &c
			}
			used[id] = true
			out[i] = res
		}
	}
	return out, nil
}

// resultGroup is one putResults statement's arrays.
type resultGroup struct {
	ids, states []string
	bodies      [][]byte
}

// resultGroups encodes results into runs without a repeated id, in order:
// ON CONFLICT cannot touch a row twice in one statement, so a repeated id
// starts the next run, applied after.
func resultGroups(results []*stemtype.TaskResult) ([]*resultGroup, error) {
	var groups []*resultGroup
	var g *resultGroup
	var seen map[string]bool
	for _, res := range results {
		raw, err := encodeResult(res)
		if err != nil {
			return nil, err
		}
		if g == nil || seen[res.ID] {
			g = &resultGroup{}
			groups = append(groups, g)
			seen = make(map[string]bool)
		}
		seen[res.ID] = true
		g.ids, g.states, g.bodies = append(g.ids, res.ID), append(g.states, string(res.State)), append(g.bodies, raw)
	}
	return groups, nil
}

// Close releases the backend's share of the connection pool. Closing an
// InTx view does nothing.
func (r *Results) Close() error {
	if r.parent != nil {
		return nil
	}
	r.closeRole()
	return nil
}
