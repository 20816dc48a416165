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

// Results is a stemdriver.ResultBackend on Redis: one string key per task
// holding the result's JSON, written by a small Lua script that keeps a
// stored final state and otherwise does SET ... PX (the key expires after
// the retention TTL). It is safe for concurrent use.
type Results struct {
	conn
	ns  string
	ttl time.Duration
}

var _ stemdriver.ResultBackend = (*Results)(nil)

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

// Put writes results, replacing each stored one whole and restarting its
// retention TTL, except a stored result whose state is final: that one is
// kept, with its TTL, and the write skipped without an error. Each chunk
// of up to 1000 results is one run of resultPutScript, so the checks and
// the writes are atomic against every other writer, in one round trip per
// chunk; results for one id are applied in the order given.
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
		raw, err := json.Marshal(res)
		if err != nil {
			return fmt.Errorf("stem: redis results: put: encode result %s: %w", res.ID, err)
		}
		raws[i] = raw
	}
	ttl := r.ttlMillis()
	for start := 0; start < len(results); start += resultChunk {
		end := min(start+resultChunk, len(results))
		keys := make([]string, 0, end-start)
		args := make([]any, 0, end-start+1)
		args = append(args, ttl)
		for i := start; i < end; i++ {
			keys = append(keys, resultKey(r.ns, results[i].ID))
			args = append(args, raws[i])
		}
		if err := resultPutScript.run(ctx, r.rdb, keys, args...).Err(); err != nil {
			if end-start == 1 {
				return r.errorf(err, "put result %s", results[start].ID)
			}
			return r.errorf(err, "put %d results (first %s)", end-start, results[start].ID)
		}
	}
	return nil
}

// ttlMillis is the retention TTL in whole milliseconds for the scripts, 0
// for none; a positive TTL below a millisecond counts as one, as SET ... PX
// would have it.
func (r *Results) ttlMillis() int64 {
	if r.ttl <= 0 {
		return 0
	}
	return max(r.ttl.Milliseconds(), 1)
}

// PutIfState stores res only while the stored result of its id is in one
// of states, and never over a final state, atomically (a Lua script); it
// implements
// stemdriver.ConditionalPutter.
func (r *Results) PutIfState(ctx context.Context, res *stemtype.TaskResult, states ...stemtype.State) (bool, error) {
	if err := r.checkOpen(); err != nil {
		return false, err
	}
	if res == nil || res.ID == "" {
		return false, errors.New("stem: redis results: put: result is nil or has no id")
	}
	raw, err := json.Marshal(res)
	if err != nil {
		return false, fmt.Errorf("stem: redis results: put: encode result %s: %w", res.ID, err)
	}
	args := make([]any, 0, 2+len(states))
	args = append(args, raw, r.ttlMillis())
	for _, st := range states {
		args = append(args, string(st))
	}
	n, err := putIfStateScript.run(ctx, r.rdb, []string{resultKey(r.ns, res.ID)}, args...).Int64()
	if err != nil {
		return false, r.errorf(err, "conditional put of result %s", res.ID)
	}
	return n == 1, nil
}

// Get returns the stored result of task id, or an error matching
// stemdriver.ErrNotFound when there is none (or it expired).
func (r *Results) Get(ctx context.Context, id string) (*stemtype.TaskResult, error) {
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	raw, err := r.rdb.Get(ctx, resultKey(r.ns, id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("stem: redis results: result %s: %w", id, stemdriver.ErrNotFound)
	}
	if err != nil {
		return nil, r.errorf(err, "get result %s", id)
	}
	var res stemtype.TaskResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("stem: redis results: result %s: stored value does not decode: %w", id, err)
	}
	return &res, nil
}

// GetMany returns the stored results of ids in order, nil for an id with
// none, with one MGET per 1000 ids.
func (r *Results) GetMany(ctx context.Context, ids ...string) ([]*stemtype.TaskResult, error) {
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
			return nil, r.errorf(err, "get %d results (first %s)", end-start, ids[start])
		}
		for i, v := range vals {
			s, ok := v.(string)
			if !ok {
				continue // nil: no result stored
			}
			var res stemtype.TaskResult
			if err := json.Unmarshal([]byte(s), &res); err != nil {
				return nil, fmt.Errorf("stem: redis results: result %s: stored value does not decode: %w", ids[start+i], err)
			}
			out[start+i] = &res
		}
	}
	return out, nil
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
