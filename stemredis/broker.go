package stemredis

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// Tuning of the broker. They are constants rather than options: the
// defaults are what every deployment wants, and the few that tests change
// are fields of Broker.
const (
	// publishChunk is the most commands sent in one pipeline by Publish.
	publishChunk = 1000
	// ackChunk is the most stream ids handed to one ack or release script.
	ackChunk = 500
	// upkeepEvery is how often a busy queue's claim also moves due
	// delayed messages to the stream. An idle or short queue gets that
	// upkeep on every claim. (Every claim takes expired leases first.)
	upkeepEvery = 100 * time.Millisecond
	// sweepEvery is how often a claim deletes consumers of the group that
	// hold nothing and were idle longer than consumerIdle.
	sweepEvery   = time.Minute
	consumerIdle = 10 * time.Minute
	// maxBlock caps one server-side wait of a blocking Claim, so that it
	// notices due delayed messages and expired leases on other queues'
	// schedules, and messages released without a new stream entry.
	maxBlock = time.Second
)

// Broker is a stemdriver.Broker on Redis Streams. It is safe for concurrent
// use. See the package documentation for its key layout and limits.
type Broker struct {
	conn
	ns  string
	blk *blocker
	// pub publishes: a client that never sends a command again after a
	// network error (see newOnceClient).
	pub *redis.Client

	// maxBlock caps one XREAD BLOCK of Claim (tests raise it).
	maxBlock time.Duration

	mu        sync.Mutex
	lastKeep  map[string]time.Time // queue -> last upkeep asked for
	lastSweep map[string]time.Time // queue -> last consumer sweep

	tokens claimTokens
}

var (
	_ stemdriver.Broker           = (*Broker)(nil)
	_ stemdriver.PendingPublisher = (*Broker)(nil)
)

// OpenBroker connects to the Redis server at url (redis:// or rediss://, see
// the package documentation for the query options) and returns a broker for
// opts.Namespace. It pings the server and fails when it is unreachable.
func OpenBroker(ctx context.Context, url string, opts stemdriver.Options) (*Broker, error) {
	rdb, cfg, err := open(ctx, url, opts)
	if err != nil {
		return nil, err
	}
	return &Broker{
		conn:      conn{rdb: rdb, addr: cfg.addr, role: "broker", log: cfg.logger},
		ns:        cfg.namespace,
		blk:       newBlocker(rdb, cfg.blockOpts),
		pub:       newOnceClient(cfg.blockOpts),
		maxBlock:  maxBlock,
		lastKeep:  make(map[string]time.Time),
		lastSweep: make(map[string]time.Time),
	}, nil
}

// microsCeil returns t in whole microseconds since the epoch, rounded up so
// that a message is never due before its NotBefore.
func microsCeil(t time.Time) int64 {
	us := t.UnixMicro() // unlike UnixNano, exact far beyond the year 2262
	if t.Nanosecond()%1000 > 0 {
		us++
	}
	return us
}

// delayedTokenLen is the length of the token in front of every member of
// a delayed set (see delayedMember).
const delayedTokenLen = 32

// delayedSeq and delayedNode make delayed-set tokens: the counter is seeded
// with the clock, so tokens of one process sort in publish order and those
// of a restarted process mostly after them, and the random node id keeps
// tokens of different processes apart.
var (
	delayedSeq  atomic.Uint64
	delayedNode [8]byte
)

func init() {
	delayedSeq.Store(uint64(time.Now().UnixNano()))
	_, _ = rand.Read(delayedNode[:]) // never fails (crypto/rand panics instead)
}

// appendDelayedToken appends a token unique to one publish to dst: 32
// lowercase hex digits, 16 of a per-process counter and 16 of a random
// per-process id.
func appendDelayedToken(dst []byte) []byte {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], delayedSeq.Add(1))
	copy(b[8:], delayedNode[:])
	return hex.AppendEncode(dst, b[:])
}

// delayedMember returns the delayed-set member of one publish of the
// envelope JSON raw: a fresh token followed by raw. The token makes every
// publish a member of its own, so that an envelope published twice while
// delayed is stored twice, as it is when ready; among messages due at the
// same microsecond it keeps one producer's publish order. The claim script
// strips it (everything before the JSON's first '{').
func delayedMember(raw []byte) []byte {
	m := make([]byte, 0, delayedTokenLen+len(raw))
	return append(appendDelayedToken(m), raw...)
}

// Publish stores envs, each as a message of its own (an envelope given
// twice, in one call or two, is two messages): an envelope due now is
// appended to its queue's stream, a delayed one (NotBefore in the future)
// goes to the queue's delayed set under a token unique to this publish. All
// go in pipelines of up to 1000 commands, one round trip each. Every
// envelope is validated before anything is sent.
func (b *Broker) Publish(ctx context.Context, envs ...*stemtype.Envelope) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	if len(envs) == 0 {
		return nil
	}
	raws, err := stemdriver.EncodeEnvelopes(envs)
	if err != nil {
		return fmt.Errorf("stem: redis broker: publish: %w", err)
	}
	now := time.Now()
	for start := 0; start < len(envs); start += publishChunk {
		end := min(start+publishChunk, len(envs))
		pipe := b.pub.Pipeline()
		b.queuePublish(ctx, pipe, now, envs[start:end], raws[start:end])
		if _, err := pipe.Exec(ctx); err != nil {
			return b.errorf(err, "publish %d envelopes (first %s to queue %q)", end-start, envs[start].ID, envs[start].Queue)
		}
	}
	return nil
}

// queuePublish adds the commands that publish envs (encoded as raws) to
// pipe.
func (b *Broker) queuePublish(ctx context.Context, pipe redis.Pipeliner, now time.Time, envs []*stemtype.Envelope, raws [][]byte) {
	for i, env := range envs {
		k := newQueueKeys(b.ns, env.Queue)
		if env.NotBefore.After(now) {
			pipe.ZAdd(ctx, k.delayed, redis.Z{Score: float64(microsCeil(env.NotBefore)), Member: delayedMember(raws[i])})
		} else {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: k.stream, Values: []any{msgField, raws[i]}})
		}
	}
}

// PublishWithResults records results in rb and publishes envs in one
// pipeline, one round trip, when rb is a *Results on the same server and
// database as b (same address, database, user and password) and no result
// is final; see stemdriver.PendingPublisher. Each result is written as
// Results.Put writes a state that is not final (SET of its state key with
// the retention TTL), before the envelopes. Otherwise it returns false and
// does nothing. More than 1000 commands go in one pipeline per 1000, in
// order.
func (b *Broker) PublishWithResults(ctx context.Context, rb stemdriver.ResultBackend, results []*stemtype.TaskResult, envs []*stemtype.Envelope) (bool, error) {
	r, ok := rb.(*Results)
	if !ok || !sameServer(b.rdb, r.rdb) {
		return false, nil
	}
	for _, res := range results {
		if res == nil || res.ID == "" || res.State.Final() {
			return false, nil
		}
	}
	if err := b.checkOpen(); err != nil {
		return true, err
	}
	if err := r.checkOpen(); err != nil {
		return true, err
	}
	raws, err := stemdriver.EncodeEnvelopes(envs)
	if err != nil {
		return true, fmt.Errorf("stem: redis broker: publish: %w", err)
	}
	states := make([][]byte, len(results))
	for i, res := range results {
		if res == nil {
			return true, errors.New("stem: redis results: put: nil result")
		}
		if states[i], err = res.AppendJSON(nil); err != nil {
			return true, fmt.Errorf("stem: redis results: put: encode result %s: %w", res.ID, err)
		}
	}
	ttl := r.ttlMillis()
	now := time.Now()
	pipe := b.pub.Pipeline()
	flush := func(force bool) error {
		if n := pipe.Len(); n == 0 || n < publishChunk && !force {
			return nil
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return b.errorf(err, "record pending states and publish (%d results, %d envelopes)", len(results), len(envs))
		}
		return nil
	}
	for i, res := range results {
		if ttl > 0 {
			pipe.Do(ctx, "set", stateKey(r.ns, res.ID), states[i], "px", ttl)
		} else {
			pipe.Do(ctx, "set", stateKey(r.ns, res.ID), states[i])
		}
		if err := flush(false); err != nil {
			return true, err
		}
	}
	for i := range envs {
		b.queuePublish(ctx, pipe, now, envs[i:i+1], raws[i:i+1])
		if err := flush(false); err != nil {
			return true, err
		}
	}
	return true, flush(true)
}

// sameServer reports whether a and b talk to the same server and database
// as the same user, so that commands of one reach the keys of the other.
func sameServer(a, b *redis.Client) bool {
	oa, ob := a.Options(), b.Options()
	return oa.Network == ob.Network && oa.Addr == ob.Addr && oa.DB == ob.DB &&
		oa.Username == ob.Username && oa.Password == ob.Password
}

// Claim leases up to req.Max messages from req.Queues, read in order. Each
// queue costs one script run (one round trip) while it has messages. When
// none is ready and req.Wait is positive, Claim blocks on the server with
// XREAD BLOCK on every queue's stream, for at most a second at a time and
// never past the next delayed message or lease deadline, and claims again
// when woken. Cancelling ctx ends the wait at once.
func (b *Broker) Claim(ctx context.Context, req stemdriver.ClaimRequest) ([]stemdriver.Delivery, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	switch {
	case len(req.Queues) == 0:
		return nil, errors.New("stem: redis broker: claim: no queues")
	case req.Max < 1:
		return nil, fmt.Errorf("stem: redis broker: claim: Max is %d, want at least 1", req.Max)
	case req.Lease <= 0:
		return nil, fmt.Errorf("stem: redis broker: claim: Lease is %v, want a positive duration", req.Lease)
	case req.Consumer == "":
		return nil, errors.New("stem: redis broker: claim: no Consumer")
	}
	deadline := time.Now().Add(req.Wait)
	for {
		ds, wait, err := b.claimOnce(ctx, req)
		if err != nil || len(ds) > 0 || req.Wait <= 0 {
			return ds, err
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		block := min(time.Until(deadline), b.maxBlock)
		if wait.due >= 0 {
			block = min(block, wait.due)
		}
		if time.Until(deadline) < time.Millisecond {
			return nil, nil
		}
		block = max(block, time.Millisecond)
		if err := b.waitForEntries(ctx, wait, block); err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return nil, ctxErr
			}
			return nil, b.errorf(err, "claim: wait on queues %q", req.Queues)
		}
	}
}

// claimWait says what a Claim that found nothing waits for.
type claimWait struct {
	streams []string // stream keys, then the id of the last entry of each
	due     time.Duration
}

// claimOnce runs the claim script on each queue in order until Max
// messages are leased.
func (b *Broker) claimOnce(ctx context.Context, req stemdriver.ClaimRequest) ([]stemdriver.Delivery, claimWait, error) {
	var (
		out  []stemdriver.Delivery
		wait = claimWait{due: -1}
		ids  []string
		errs []error
	)
	leaseUS := req.Lease.Microseconds()
	if leaseUS < 1 {
		leaseUS = 1
	}
	for _, q := range req.Queues {
		remaining := req.Max - len(out)
		if remaining <= 0 {
			break
		}
		k := newQueueKeys(b.ns, q)
		keep, sweep := b.upkeepDue(q)
		token, done := b.tokens.take(req.Consumer, q)
		keys := make([]string, 0, 4+len(done))
		keys = append(keys, k.stream, k.leases, k.delayed, k.claimKey(token))
		for _, t := range done {
			keys = append(keys, k.claimKey(t))
		}
		res, err := claimScript.run(ctx, b.rdb, keys,
			group, req.Consumer, remaining, leaseUS, flag(keep), flag(sweep), consumerIdle.Milliseconds(),
			max(req.Lease.Milliseconds(), 1),
		).Slice()
		if err == nil && (len(res) < 2 || (len(res)-2)%3 != 0) {
			err = fmt.Errorf("unexpected reply of %d elements", len(res))
		}
		b.tokens.settle(req.Consumer, q, token, done, err == nil, len(res) > 2)
		if err != nil {
			// One failing queue must not hold back the others: go on, and
			// report the failure only if nothing was leased.
			errs = append(errs, b.errorf(err, "claim from queue %q", q))
			continue
		}
		for i := 2; i < len(res); i += 3 {
			id, _ := res[i].(string)
			raw, _ := res[i+1].(string)
			d := decodeDelivery(q, id, []byte(raw))
			r, ok := res[i+2].(int64)
			d.Redelivered = !ok || r != 0 // cannot tell: redelivered
			out = append(out, d)
		}
		if len(res) == 2 {
			last, _ := res[0].(string)
			wait.streams = append(wait.streams, k.stream)
			ids = append(ids, last)
			if due, ok := res[1].(int64); ok && due >= 0 {
				d := time.Duration(due) * time.Microsecond
				if wait.due < 0 || d < wait.due {
					wait.due = d
				}
			}
		}
	}
	wait.streams = append(wait.streams, ids...)
	if len(errs) > 0 {
		if len(out) == 0 {
			return nil, wait, errors.Join(errs...)
		}
		b.log.Warn("claim: some queues failed; returning the messages leased from the others", "err", errors.Join(errs...))
	}
	return out, wait, nil
}

// decodeDelivery builds the delivery of one stream entry. An entry that
// does not decode to a valid envelope is still delivered, with DecodeErr
// set, so that the core dead-letters it rather than losing it.
func decodeDelivery(queue, id string, raw []byte) stemdriver.Delivery {
	d := stemdriver.Delivery{Raw: raw, Queue: queue, Receipt: id}
	var env stemtype.Envelope
	if err := stemtype.DecodeEnvelope(raw, &env); err != nil {
		d.DecodeErr = fmt.Errorf("stem: redis broker: undecodable message %s in queue %q: %w", id, queue, err)
		return d
	}
	if err := env.Validate(); err != nil {
		d.DecodeErr = fmt.Errorf("stem: redis broker: invalid message %s in queue %q: %w", id, queue, err)
		return d
	}
	d.Envelope = &env
	return d
}

// upkeepDue reports whether this claim on queue should do the upkeep and
// the consumer sweep, and notes that it will.
func (b *Broker) upkeepDue(queue string) (keep, sweep bool) {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.lastKeep[queue]) >= upkeepEvery {
		b.lastKeep[queue] = now
		keep = true
	}
	if now.Sub(b.lastSweep[queue]) >= sweepEvery {
		b.lastSweep[queue] = now
		sweep = true
	}
	return keep, sweep
}

func flag(v bool) string {
	if v {
		return "1"
	}
	return "0"
}

// waitForEntries blocks until an entry is appended to one of the streams
// after the ids the claim script reported, block passes, or ctx ends.
func (b *Broker) waitForEntries(ctx context.Context, w claimWait, block time.Duration) error {
	return b.blk.do(ctx, func(ctx context.Context, conn *redis.Conn) error {
		err := conn.XRead(ctx, &redis.XReadArgs{Streams: w.streams, Count: 1, Block: block}).Err()
		if errors.Is(err, redis.Nil) {
			return nil
		}
		return err
	})
}

// ExtendLease pushes d's lease deadline to now+lease (server clock). It
// returns an error matching stemdriver.ErrLeaseLost when d's lease expired
// and another claim took the message, or it was finished.
func (b *Broker) ExtendLease(ctx context.Context, d stemdriver.Delivery, lease time.Duration) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	if err := checkDelivery(d); err != nil {
		return err
	}
	k := newQueueKeys(b.ns, d.Queue)
	n, err := extendScript.run(ctx, b.rdb, []string{k.leases}, d.Receipt, max(lease.Microseconds(), 1)).Int64()
	if err != nil {
		return b.errorf(err, "extend lease of %s in queue %q", d.Receipt, d.Queue)
	}
	if n == 0 {
		return fmt.Errorf("stem: redis broker: extend lease of %s in queue %q: %w", d.Receipt, d.Queue, stemdriver.ErrLeaseLost)
	}
	return nil
}

func checkDelivery(d stemdriver.Delivery) error {
	if d.Queue == "" || d.Receipt == "" {
		return fmt.Errorf("stem: redis broker: delivery has no queue or receipt (queue %q, receipt %q)", d.Queue, d.Receipt)
	}
	return nil
}

// Ack finishes ds: each leaves its queue's stream together with its lease,
// in one script run per queue and 500 messages, all in one pipeline. When
// some were no longer held the others are still finished, and the error
// matches stemdriver.ErrLeaseLost.
func (b *Broker) Ack(ctx context.Context, ds ...stemdriver.Delivery) error {
	lost, err := b.finishMany(ctx, ackScript, "ack", ds)
	if err != nil {
		return err
	}
	if len(lost) > 0 {
		return fmt.Errorf("stem: redis broker: ack: %d of %d deliveries no longer held (first %s): %w", len(lost), len(ds), lost[0], stemdriver.ErrLeaseLost)
	}
	return nil
}

// Release makes ds ready again at once: each is appended to its stream
// again, unchanged, under a new id, so that a blocked Claim wakes for it.
// Deliveries no longer held are left alone and reported with an error
// matching stemdriver.ErrLeaseLost.
func (b *Broker) Release(ctx context.Context, ds ...stemdriver.Delivery) error {
	lost, err := b.finishMany(ctx, releaseScript, "release", ds)
	if err != nil {
		return err
	}
	if len(lost) > 0 {
		return fmt.Errorf("stem: redis broker: release: %d of %d deliveries no longer held (first %s): %w", len(lost), len(ds), lost[0], stemdriver.ErrLeaseLost)
	}
	return nil
}

// finishMany runs s (the ack or release script) over ds grouped by queue,
// in one pipeline, and returns the receipts that were not held.
func (b *Broker) finishMany(ctx context.Context, s *script, what string, ds []stemdriver.Delivery) ([]string, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	if len(ds) == 0 {
		return nil, nil
	}
	byQueue := make(map[string][]any, 1)
	var order []string
	for _, d := range ds {
		if err := checkDelivery(d); err != nil {
			return nil, fmt.Errorf("stem: redis broker: %s: %w", what, err)
		}
		if _, ok := byQueue[d.Queue]; !ok {
			order = append(order, d.Queue)
		}
		byQueue[d.Queue] = append(byQueue[d.Queue], d.Receipt)
	}
	var calls []scriptCall
	for _, q := range order {
		k := newQueueKeys(b.ns, q)
		ids := byQueue[q]
		for start := 0; start < len(ids); start += ackChunk {
			end := min(start+ackChunk, len(ids))
			args := make([]any, 0, end-start+1)
			args = append(args, group)
			args = append(args, ids[start:end]...)
			calls = append(calls, scriptCall{s: s, keys: []string{k.stream, k.leases}, args: args})
		}
	}
	var cmds []*redis.Cmd
	var err error
	if len(calls) == 1 {
		cmds = []*redis.Cmd{s.run(ctx, b.rdb, calls[0].keys, calls[0].args...)}
		err = cmds[0].Err()
	} else {
		cmds, err = runPipelined(ctx, b.rdb, calls)
	}
	if err != nil {
		return nil, b.errorf(err, "%s %d deliveries", what, len(ds))
	}
	var lost []string
	for _, cmd := range cmds {
		ids, err := cmd.StringSlice()
		if err != nil {
			return nil, b.errorf(err, "%s %d deliveries", what, len(ds))
		}
		lost = append(lost, ids...)
	}
	return lost, nil
}

// Retry replaces d with next in one script run, while d is still leased:
// d leaves the stream, and next goes to the delayed set of its queue when
// its NotBefore is in the future (server clock), or to that queue's stream.
// A Retry of a delivery no longer leased (already retried, acked, or its
// lease expired and another claim took the message) stores nothing and
// returns an error matching stemdriver.ErrLeaseLost, so replaying a Retry
// whose outcome is unknown never duplicates next. When next names another queue the script touches
// both queues' keys, which Redis Cluster would refuse unless the two share
// a hash slot (see the package documentation).
func (b *Broker) Retry(ctx context.Context, d stemdriver.Delivery, next *stemtype.Envelope) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	if err := checkDelivery(d); err != nil {
		return err
	}
	if err := next.Validate(); err != nil {
		return fmt.Errorf("stem: redis broker: retry: %w", err)
	}
	raw, err := json.Marshal(next)
	if err != nil {
		return fmt.Errorf("stem: redis broker: retry: encode envelope %s: %w", next.ID, err)
	}
	var nb int64
	if !next.NotBefore.IsZero() {
		nb = microsCeil(next.NotBefore)
	}
	k, nk := newQueueKeys(b.ns, d.Queue), newQueueKeys(b.ns, next.Queue)
	token := appendDelayedToken(make([]byte, 0, delayedTokenLen))
	n, err := retryScript.run(ctx, b.rdb, []string{k.stream, k.leases, nk.stream, nk.delayed},
		group, d.Receipt, raw, strconv.FormatInt(nb, 10), token).Int64()
	if err != nil {
		return b.errorf(err, "retry of %s in queue %q", d.Receipt, d.Queue)
	}
	if n == 0 {
		return fmt.Errorf("stem: redis broker: retry of %s in queue %q: %w", d.Receipt, d.Queue, stemdriver.ErrLeaseLost)
	}
	return nil
}

// DeadLetter moves d from its queue's stream to the queue's dead-letter
// stream (key suffix ":dead"), with fields msg (the stored bytes), reason,
// queue, stream_id and dead_at_ms. Dead letters are kept until an operator
// deletes them.
func (b *Broker) DeadLetter(ctx context.Context, d stemdriver.Delivery, reason string) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	if err := checkDelivery(d); err != nil {
		return err
	}
	k := newQueueKeys(b.ns, d.Queue)
	n, err := deadLetterScript.run(ctx, b.rdb, []string{k.stream, k.leases, k.dead},
		group, d.Receipt, reason, d.Queue).Int64()
	if err != nil {
		return b.errorf(err, "dead-letter %s in queue %q", d.Receipt, d.Queue)
	}
	if n == 0 {
		return fmt.Errorf("stem: redis broker: dead-letter %s in queue %q: %w", d.Receipt, d.Queue, stemdriver.ErrLeaseLost)
	}
	return nil
}

// Depth counts queue's ready messages (leased ones whose lease expired
// included) and delayed ones.
func (b *Broker) Depth(ctx context.Context, queue string) (int64, error) {
	if err := b.checkOpen(); err != nil {
		return 0, err
	}
	k := newQueueKeys(b.ns, queue)
	n, err := depthScript.runRO(ctx, b.rdb, []string{k.stream, k.leases, k.delayed}).Int64()
	if err != nil {
		return 0, b.errorf(err, "depth of queue %q", queue)
	}
	return n, nil
}

// Close ends blocked Claims, waits for them to return and closes the
// connections. Operations after Close return an error matching
// stemdriver.ErrClosed. Close is safe to call more than once.
func (b *Broker) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	b.blk.close()
	_ = b.pub.Close()
	if err := b.rdb.Close(); err != nil {
		return fmt.Errorf("stem: redis broker at %s: close: %w", b.addr, err)
	}
	return nil
}

// Delayed lists at most limit delayed messages of queue, soonest first,
// and how many the queue's delayed set holds (stemdriver.DelayedLister),
// in one round trip. A message already due that the upkeep has not moved
// to the stream yet is listed too.
func (b *Broker) Delayed(ctx context.Context, queue string, limit int) ([]*stemtype.Envelope, int64, error) {
	if err := b.checkOpen(); err != nil {
		return nil, 0, err
	}
	k := newQueueKeys(b.ns, queue)
	pipe := b.rdb.Pipeline()
	card := pipe.ZCard(ctx, k.delayed)
	var members *redis.StringSliceCmd
	if limit > 0 {
		members = pipe.ZRange(ctx, k.delayed, 0, int64(limit-1))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, 0, b.errorf(err, "list the delayed messages of queue %q", queue)
	}
	out := []*stemtype.Envelope{}
	if members == nil {
		return out, card.Val(), nil
	}
	for _, m := range members.Val() {
		raw := m
		if i := strings.IndexByte(m, '{'); i >= 0 {
			raw = m[i:] // without the token, as the claim script strips it
		}
		var env stemtype.Envelope
		if err := stemtype.DecodeEnvelope([]byte(raw), &env); err != nil {
			return nil, 0, fmt.Errorf("stem: redis broker: decode a delayed message of queue %q: %w", queue, err)
		}
		out = append(out, &env)
	}
	return out, card.Val(), nil
}
