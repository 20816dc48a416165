package stemredis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// resultChunk is the most results written in one pipeline.
const resultChunk = 1000

// Results is a stemdriver.ResultBackend on Redis. A task's results live
// in two string keys: its final result (succeeded, failed, cancelled) at
// resultKey, written once with SET NX so that the first final state wins
// atomically, and its latest result that is not final at stateKey,
// overwritten by every such write and deleted by the final one. Reads take
// the final record when there is one. Both keys expire after the retention
// TTL. It is safe for concurrent use.
type Results struct {
	conn
	ns  string
	ttl time.Duration
}

var (
	_ stemdriver.ResultBackend     = (*Results)(nil)
	_ stemdriver.ConditionalPutter = (*Results)(nil)
	_ stemdriver.FinalGetter       = (*Results)(nil)
)

// OpenResults connects to the Redis server at url and returns a result
// backend for opts.Namespace. The URL's result_ttl option sets how long a
// result is kept after its last write (default 24h; 0 keeps results
// forever). It pings the server and fails when it is unreachable.
func OpenResults(ctx context.Context, url string, opts stemdriver.Options) (*Results, error) {
	rdb, cfg, err := open(ctx, url, opts)
	if err != nil {
		return nil, err
	}
	return &Results{conn: conn{rdb: rdb, addr: cfg.addr, role: "results", log: cfg.logger}, ns: cfg.namespace, ttl: cfg.resultTTL}, nil
}

// Put writes results with native commands, one pipeline (one round trip)
// per chunk of up to 1000, in the order given. A result that is not final
// replaces the task's state key (SET ... PX: its retention TTL restarts);
// a final one is written to the result key with SET ... NX PX, so a stored
// final state is kept, with its TTL, and the write skipped without an
// error (the first final state wins, atomically against every other
// writer), and deletes the state key in the same pipeline.
//
// A write that is not final and comes after the final one (a late progress
// update, a redelivery's started) recreates the state key. That is
// harmless: reads prefer the result key, and the state key expires after
// the TTL. Only if the final record expires first (it was written earlier)
// does a read return that late record, for at most the time between the
// two writes.
//
// A final write that NX skipped is checked once more when the key it found
// may not hold a final state, which only a version of this package before
// the two-key layout wrote there (see finalOverLegacyScript); such checks
// cost a round trip, and only for skipped final writes, which are rare.
func (r *Results) Put(ctx context.Context, results ...*stemtype.TaskResult) error {
	if err := r.checkOpen(); err != nil {
		return err
	}
	if len(results) == 0 {
		return nil
	}
	raws := make([][]byte, len(results))
	for i, res := range results {
		if res == nil || res.ID == "" {
			return errors.New("stem: redis results: put: result is nil or has no id")
		}
		raw, err := res.AppendJSON(nil)
		if err != nil {
			return fmt.Errorf("stem: redis results: put: encode result %s: %w", res.ID, err)
		}
		raws[i] = raw
	}
	ttl := r.ttlMillis()
	var skipped []int // final writes NX skipped
	for start := 0; start < len(results); start += resultChunk {
		end := min(start+resultChunk, len(results))
		finals := make([]*redis.Cmd, end-start)
		pipe := r.rdb.Pipeline()
		for i := start; i < end; i++ {
			id := results[i].ID
			if results[i].State.Final() {
				if ttl > 0 {
					finals[i-start] = pipe.Do(ctx, "set", resultKey(r.ns, id), raws[i], "px", ttl, "nx")
				} else {
					finals[i-start] = pipe.Do(ctx, "set", resultKey(r.ns, id), raws[i], "nx")
				}
				pipe.Del(ctx, stateKey(r.ns, id))
			} else if ttl > 0 {
				pipe.Do(ctx, "set", stateKey(r.ns, id), raws[i], "px", ttl)
			} else {
				pipe.Do(ctx, "set", stateKey(r.ns, id), raws[i])
			}
		}
		cmds, _ := pipe.Exec(ctx)
		for _, cmd := range cmds {
			if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
				if end-start == 1 {
					return r.errorf(err, "put result %s", results[start].ID)
				}
				return r.errorf(err, "put %d results (first %s)", end-start, results[start].ID)
			}
		}
		for i, cmd := range finals {
			if cmd != nil && errors.Is(cmd.Err(), redis.Nil) {
				skipped = append(skipped, start+i)
			}
		}
	}
	if len(skipped) > 0 {
		return r.putOverLegacy(ctx, results, raws, skipped, ttl)
	}
	return nil
}

// putOverLegacy runs finalOverLegacyScript for the final writes at
// skipped (indexes into results, in order) whose id got no final record
// from this call: the result key they found may hold a record that is not
// final, written by an older version of this package. The checks of one
// call are one pipeline.
func (r *Results) putOverLegacy(ctx context.Context, results []*stemtype.TaskResult, raws [][]byte, skipped []int, ttl int64) error {
	skip := make([]bool, len(results))
	for _, i := range skipped {
		skip[i] = true
	}
	done := make(map[string]bool) // ids whose final write of this call was stored
	for i, res := range results {
		if res.State.Final() && !skip[i] {
			done[res.ID] = true
		}
	}
	var calls []scriptCall
	var ids []string
	for _, i := range skipped {
		id := results[i].ID
		if done[id] {
			continue
		}
		calls = append(calls, scriptCall{s: finalOverLegacyScript,
			keys: []string{resultKey(r.ns, id), stateKey(r.ns, id)}, args: []any{raws[i], ttl}})
		ids = append(ids, id)
	}
	if len(calls) == 0 {
		return nil
	}
	if _, err := runPipelined(ctx, r.rdb, calls); err != nil {
		return r.errorf(err, "put %d final results over stored ones (first %s)", len(calls), ids[0])
	}
	return nil
}

// ttlMillis is the retention TTL in whole milliseconds, 0 for none; a
// positive TTL below a millisecond counts as one.
func (r *Results) ttlMillis() int64 {
	if r.ttl <= 0 {
		return 0
	}
	return max(r.ttl.Milliseconds(), 1)
}

// PutIfState stores res only while the stored result of its id is in one
// of states, and never over a final state, atomically (putIfStateScript,
// over both keys of the id); it implements stemdriver.ConditionalPutter.
func (r *Results) PutIfState(ctx context.Context, res *stemtype.TaskResult, states ...stemtype.State) (bool, error) {
	if err := r.checkOpen(); err != nil {
		return false, err
	}
	if res == nil || res.ID == "" {
		return false, errors.New("stem: redis results: put: result is nil or has no id")
	}
	raw, err := res.AppendJSON(nil)
	if err != nil {
		return false, fmt.Errorf("stem: redis results: put: encode result %s: %w", res.ID, err)
	}
	final := 0
	if res.State.Final() {
		final = 1
	}
	args := make([]any, 0, 3+len(states))
	args = append(args, raw, r.ttlMillis(), final)
	for _, st := range states {
		args = append(args, string(st))
	}
	keys := []string{resultKey(r.ns, res.ID), stateKey(r.ns, res.ID)}
	n, err := putIfStateScript.run(ctx, r.rdb, keys, args...).Int64()
	if err != nil {
		return false, r.errorf(err, "conditional put of result %s", res.ID)
	}
	return n == 1, nil
}

// Get returns the stored result of task id, or an error matching
// stemdriver.ErrNotFound when there is none (or it expired). It reads both
// keys of the id with one MGET (see pickResult).
func (r *Results) Get(ctx context.Context, id string) (*stemtype.TaskResult, error) {
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	vals, err := r.rdb.MGet(ctx, resultKey(r.ns, id), stateKey(r.ns, id)).Result()
	if err != nil {
		return nil, r.errorf(err, "get result %s", id)
	}
	res, err := pickResult(id, vals[0], vals[1])
	if err != nil {
		return nil, err
	}
	if res == nil {
		return nil, fmt.Errorf("stem: redis results: result %s: %w", id, stemdriver.ErrNotFound)
	}
	return res, nil
}

// GetMany returns the stored results of ids in order, nil for an id with
// none, with one MGET (of both keys of each id) per 1000 ids.
func (r *Results) GetMany(ctx context.Context, ids ...string) ([]*stemtype.TaskResult, error) {
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	out := make([]*stemtype.TaskResult, len(ids))
	for start := 0; start < len(ids); start += resultChunk {
		end := min(start+resultChunk, len(ids))
		keys := make([]string, 0, 2*(end-start))
		for _, id := range ids[start:end] {
			keys = append(keys, resultKey(r.ns, id), stateKey(r.ns, id))
		}
		vals, err := r.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, r.errorf(err, "get %d results (first %s)", end-start, ids[start])
		}
		for i := range end - start {
			res, err := pickResult(ids[start+i], vals[2*i], vals[2*i+1])
			if err != nil {
				return nil, err
			}
			out[start+i] = res
		}
	}
	return out, nil
}

// GetFinalMany returns, in order, the final result of each id (succeeded,
// failed or cancelled), nil for an id with none, with one MGET of the
// result keys alone per 1000 ids; it implements stemdriver.FinalGetter.
// It is what a worker checks a claimed batch with: for tasks that have not
// finished it reads nothing and decodes nothing, where GetMany returns and
// decodes every pending record. A record of an older version that is not
// final (see the package doc) counts as none.
func (r *Results) GetFinalMany(ctx context.Context, ids ...string) ([]*stemtype.TaskResult, error) {
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	out := make([]*stemtype.TaskResult, len(ids))
	for start := 0; start < len(ids); start += resultChunk {
		end := min(start+resultChunk, len(ids))
		keys := make([]string, 0, end-start)
		for _, id := range ids[start:end] {
			keys = append(keys, resultKey(r.ns, id))
		}
		vals, err := r.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, r.errorf(err, "get %d final results (first %s)", end-start, ids[start])
		}
		for i, v := range vals {
			s, ok := v.(string)
			if !ok {
				continue // nil: no final result stored
			}
			res, err := decodeResult(ids[start+i], s)
			if err != nil {
				return nil, err
			}
			if res.State.Final() {
				out[start+i] = res
			}
		}
	}
	return out, nil
}

// pickResult decodes the result of id from the values MGET returned for
// its result key (final) and state key (state): the final record when
// there is one, else the state record, else nil. A record at the result key
// that is not final was written by a version of this package before the
// two-key layout; a state record, when there is one, is newer than it.
func pickResult(id string, final, state any) (*stemtype.TaskResult, error) {
	f, hasFinal := final.(string)
	s, hasState := state.(string)
	if hasFinal {
		res, err := decodeResult(id, f)
		if err != nil || res.State.Final() || !hasState {
			return res, err
		}
	}
	if hasState {
		return decodeResult(id, s)
	}
	return nil, nil
}

// decodeResult decodes a stored result of id.
func decodeResult(id, raw string) (*stemtype.TaskResult, error) {
	var res stemtype.TaskResult
	if err := json.Unmarshal([]byte(raw), &res); err != nil {
		return nil, fmt.Errorf("stem: redis results: result %s: stored value does not decode: %w", id, err)
	}
	return &res, nil
}

// Close closes the connections. Operations after Close return an error
// matching stemdriver.ErrClosed. Close is safe to call more than once.
func (r *Results) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	if err := r.rdb.Close(); err != nil {
		return fmt.Errorf("stem: redis results at %s: close: %w", r.addr, err)
	}
	return nil
}
