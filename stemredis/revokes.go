package stemredis

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

const (
	// revokeChunk is the most records handed to one upsert script run.
	revokeChunk = 500
	// pruneChunk is the most records one prune script run deletes.
	pruneChunk = 1000
	// listScanCount is the COUNT hint of the HSCAN that lists records.
	listScanCount = 5000
	// changesPage is the most changes one ListChanges script run reads.
	changesPage = 5000
)

// Revokes is a stemdriver.RevokeStore on Redis: per namespace a hash of
// task id to record JSON and a sorted set of expiry times. Upsert assigns
// versions inside a Lua script, so concurrent writers on any number of
// connections and hosts converge: every task holds the record applied last,
// with the highest version. It is safe for concurrent use.
type Revokes struct {
	conn
}

var (
	_ stemdriver.RevokeStore        = (*Revokes)(nil)
	_ stemdriver.RevokeChangeLister = (*Revokes)(nil)
)

// OpenRevokes connects to the Redis server at url and returns a revoke
// store. Records carry their namespace, so opts.Namespace is not used. It
// pings the server and fails when it is unreachable.
func OpenRevokes(ctx context.Context, url string, opts stemdriver.Options) (*Revokes, error) {
	rdb, cfg, err := open(ctx, url, opts)
	if err != nil {
		return nil, err
	}
	return &Revokes{conn: conn{rdb: rdb, addr: cfg.addr, role: "revokes", log: cfg.logger}}, nil
}

// Upsert stores every record, each with version max(stored+1, proposed),
// and returns them, in input order, with the versions they were stored
// with; a record of a task with no stored record and a tombstone at or
// above its proposed version is not stored and comes back with Version 0.
// Records are applied by one script run per namespace and 500
// records, all in one pipeline; records of one namespace are applied in
// input order. A script run is atomic; when one fails (a task already at
// the highest version, or a lost connection), the runs before it in the
// pipeline may have applied their records.
func (s *Revokes) Upsert(ctx context.Context, recs ...stemtype.RevokeRecord) ([]stemtype.RevokeRecord, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	if len(recs) == 0 {
		return nil, nil
	}
	type call struct {
		idx []int // input positions of the call's records
	}
	var (
		calls   []scriptCall
		callIdx []call
		filling = map[string]int{} // namespace -> index of its call being filled
	)
	for i := range recs {
		r := &recs[i]
		args, err := revokeArgs(r)
		if err != nil {
			return nil, err
		}
		c, ok := filling[r.Namespace]
		if !ok || len(callIdx[c].idx) >= revokeChunk {
			k := newRevokeKeys(r.Namespace)
			calls = append(calls, scriptCall{s: revokeUpsertScript, keys: k.upsertKeys()})
			callIdx = append(callIdx, call{})
			c = len(calls) - 1
			filling[r.Namespace] = c
		}
		calls[c].args = append(calls[c].args, args...)
		callIdx[c].idx = append(callIdx[c].idx, i)
	}
	var (
		cmds []*redis.Cmd
		err  error
	)
	if len(calls) == 1 {
		cmds = []*redis.Cmd{revokeUpsertScript.run(ctx, s.rdb, calls[0].keys, calls[0].args...)}
		err = cmds[0].Err()
	} else {
		cmds, err = runPipelined(ctx, s.rdb, calls)
	}
	if err != nil {
		return nil, s.errorf(err, "upsert %d records", len(recs))
	}
	out := make([]stemtype.RevokeRecord, len(recs))
	for c, cmd := range cmds {
		vals, err := cmd.StringSlice()
		if err != nil {
			return nil, s.errorf(err, "upsert %d records", len(recs))
		}
		if len(vals) != len(callIdx[c].idx) {
			return nil, s.errorf(fmt.Errorf("%d replies for %d records", len(vals), len(callIdx[c].idx)), "upsert")
		}
		for j, v := range vals {
			i := callIdx[c].idx[j]
			ver, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, s.errorf(fmt.Errorf("version %q assigned to task %q: %w", v, recs[i].TaskID, err), "upsert")
			}
			out[i] = recs[i]
			out[i].Version = ver
		}
	}
	return out, nil
}

// revokeArgs validates r and returns its four arguments of the upsert
// scripts: task id, proposed version, record JSON, ExpiresAt in µs.
func revokeArgs(r *stemtype.RevokeRecord) ([]any, error) {
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("stem: redis revokes: upsert: %w", err)
	}
	raw, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("stem: redis revokes: upsert: encode record for task %q: %w", r.TaskID, err)
	}
	exp := ""
	if !r.ExpiresAt.IsZero() {
		exp = strconv.FormatInt(r.ExpiresAt.UnixMicro(), 10)
	}
	return []any{r.TaskID, strconv.FormatInt(r.Version, 10), raw, exp}, nil
}

// List returns every stored record of namespace, expired ones included
// until pruned. It reads the hash with HSCAN, so a large set does not hold
// up the server; a stored value that does not decode is logged and skipped.
func (s *Revokes) List(ctx context.Context, namespace string) ([]stemtype.RevokeRecord, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	k := newRevokeKeys(namespace)
	var (
		out    []stemtype.RevokeRecord
		seen   map[string]struct{}
		cursor uint64
		first  = true
	)
	for first || cursor != 0 {
		kvs, next, err := s.rdb.HScan(ctx, k.records, cursor, "", listScanCount).Result()
		if err != nil {
			return nil, s.errorf(err, "list revokes of namespace %q", namespace)
		}
		// HSCAN may return an entry twice while the hash is rehashed; a
		// scan of one reply (a small hash) cannot.
		if !first || next != 0 {
			if seen == nil {
				seen = make(map[string]struct{}, len(out)+len(kvs)/2)
				for _, r := range out {
					seen[r.TaskID] = struct{}{}
				}
			}
		}
		first, cursor = false, next
		for i := 0; i+1 < len(kvs); i += 2 {
			if seen != nil {
				if _, dup := seen[kvs[i]]; dup {
					continue
				}
				seen[kvs[i]] = struct{}{}
			}
			if r, ok := s.decode(ctx, namespace, kvs[i], kvs[i+1]); ok {
				out = append(out, r)
			}
		}
	}
	return out, nil
}

// ListChanges returns the records of namespace upserted since cursor and
// the cursor to pass next time (stemdriver.RevokeChangeLister). A cursor is
// the epoch of the namespace's change sequence and a sequence number; with
// "", or a cursor of another epoch (the keys were lost since) or one it
// cannot read, it lists every record with List, after reading the
// sequence, so that nothing upserted during the listing is missed. Changes
// are read in script runs of at most 5000, so a large backlog does not hold
// up the server.
func (s *Revokes) ListChanges(ctx context.Context, namespace, cursor string) ([]stemtype.RevokeRecord, string, error) {
	if err := s.checkOpen(); err != nil {
		return nil, "", err
	}
	k := newRevokeKeys(namespace)
	epoch, seq, ok := strings.Cut(cursor, ":")
	if ok && epoch != "" {
		if _, err := strconv.ParseFloat(seq, 64); err != nil {
			ok = false
		}
	}
	if !ok || epoch == "" {
		return s.listAll(ctx, namespace)
	}
	var out []stemtype.RevokeRecord
	for {
		vals, err := revokeChangesScript.runRO(ctx, s.rdb, []string{k.records, k.changes, k.seq}, epoch, seq, changesPage).StringSlice()
		if err != nil {
			return nil, "", s.errorf(err, "list revoke changes of namespace %q", namespace)
		}
		if len(vals) == 1 {
			// Another epoch: the sequence the cursor counted is gone.
			return s.listAll(ctx, namespace)
		}
		if len(vals) < 3 || len(vals)%2 == 0 {
			return nil, "", s.errorf(fmt.Errorf("%d values in the reply", len(vals)), "list revoke changes of namespace %q", namespace)
		}
		read, err := strconv.Atoi(vals[1])
		if err != nil {
			return nil, "", s.errorf(fmt.Errorf("count %q in the reply: %w", vals[1], err), "list revoke changes of namespace %q", namespace)
		}
		seq = vals[2]
		for i := 3; i+1 < len(vals); i += 2 {
			if r, ok := s.decode(ctx, namespace, vals[i], vals[i+1]); ok {
				out = append(out, r)
			}
		}
		if read < changesPage {
			return out, epoch + ":" + seq, nil
		}
	}
}

// listAll lists every record of namespace and returns them with a cursor of
// the change sequence as it was before the listing began.
func (s *Revokes) listAll(ctx context.Context, namespace string) ([]stemtype.RevokeRecord, string, error) {
	k := newRevokeKeys(namespace)
	v, err := revokeSeqScript.runRO(ctx, s.rdb, []string{k.seq}).StringSlice()
	if err != nil {
		return nil, "", s.errorf(err, "read the revoke sequence of namespace %q", namespace)
	}
	if len(v) != 2 {
		return nil, "", s.errorf(fmt.Errorf("%d values in the reply", len(v)), "read the revoke sequence of namespace %q", namespace)
	}
	recs, err := s.List(ctx, namespace)
	if err != nil {
		return nil, "", err
	}
	// With no sequence yet the cursor has no epoch, so the next call
	// lists everything again: records written by a stem older than the
	// sequence carry no change number.
	return recs, v[0] + ":" + v[1], nil
}

// decode decodes the stored record of taskID, logging and skipping one that
// does not decode.
func (s *Revokes) decode(ctx context.Context, namespace, taskID, raw string) (stemtype.RevokeRecord, bool) {
	var r stemtype.RevokeRecord
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		s.log.WarnContext(ctx, "stem: redis revokes: skipping undecodable record",
			slog.String("namespace", namespace), slog.String("task_id", taskID), slog.String("error", err.Error()))
		return r, false
	}
	return r, true
}

// Prune deletes namespace's records that expired at or before the Redis
// server's clock (TIME), in whole microseconds, and returns how many it
// deleted. It ignores now: the server's clock is the one every worker
// shares, so a worker whose own clock runs ahead deletes no revoke that
// still applies. It deletes in script runs of at most 1000 records, so a
// large prune does not hold up the server. It leaves a tombstone of each
// record it deletes (their version, until stemdriver.RevokeTombstoneRetention
// has passed by the server's clock) and deletes the tombstones past theirs.
func (s *Revokes) Prune(ctx context.Context, namespace string, _ time.Time) (int, error) {
	if err := s.checkOpen(); err != nil {
		return 0, err
	}
	k := newRevokeKeys(namespace)
	total := 0
	for {
		ns, err := revokePruneScript.run(ctx, s.rdb, []string{k.records, k.expiry, k.changes, k.tombs, k.tombExpiry},
			pruneChunk, stemdriver.RevokeTombstoneRetention.Microseconds()).Int64Slice()
		if err == nil && len(ns) != 2 {
			err = fmt.Errorf("%d values in the reply", len(ns))
		}
		if err != nil {
			return total, s.errorf(err, "prune revokes of namespace %q", namespace)
		}
		total += int(ns[0])
		if ns[0] < pruneChunk && ns[1] < pruneChunk {
			return total, nil
		}
	}
}

// Close closes the connections. Operations after Close return an error
// matching stemdriver.ErrClosed. Close is safe to call more than once.
func (s *Revokes) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if err := s.rdb.Close(); err != nil {
		return fmt.Errorf("stem: redis revokes at %s: close: %w", s.addr, err)
	}
	return nil
}
