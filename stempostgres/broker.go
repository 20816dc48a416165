package stempostgres

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// PollInterval is the longest an idle Claim waits without looking at the
// table: a notification lost while the listener reconnects delays work by
// at most this much.
const PollInterval = time.Second

// publishChunk is the most envelopes one INSERT statement carries.
const publishChunk = 5000

// finishMax is the most deliveries one Ack or Release statement carries.
const finishMax = 1000

// Broker is a stemdriver.Broker on Postgres: one row per message in
// stem_tasks, claimed with FOR UPDATE SKIP LOCKED, leased until a server
// time, and deleted by Ack. It is safe for concurrent use.
type Broker struct {
	role
	db      db // the pool, or a caller's transaction (InTx)
	channel string
	parent  *Broker       // set on an InTx view
	done    chan struct{} // closed by Close; a view shares its parent's

	curMu   sync.Mutex
	cursors map[string]claimCursor // by queue; see claimCursor

	// lost holds, by queue, the tokens of claims that failed: each may
	// have committed with its reply lost (the connection cut after the
	// commit), and the next claim of the queue replays them (claimReplay)
	// before it claims anything new, taking back rows that would otherwise
	// wait out their lease held by nobody.
	lostMu     sync.Mutex
	lostClaims map[string][]string
	// loseReply, set by tests, makes a claim that committed fail as if
	// its reply had been lost.
	loseReply func() bool
}

// claimCursor is where a queue's last claim ended: the key, in the claim
// index's order, of the last row it took. A claim made from it
// (claimAfter) starts its scan there rather than at the head of the
// queue, where every row a claim takes leaves a dead index entry (its
// visible_at moves to the lease's end) that every later claim would walk
// until a VACUUM: a 200,000-task backlog drained at 11k tasks/s, and at
// 26k/s with a VACUUM every 2 s. Rows that become ready behind a cursor (a
// lease that expired, a delayed message due at an earlier time than the
// cursor's, a row another claim locked and then left) are found by a claim
// from the head, made whenever the cursor is older than cursorFresh or a
// claim from it finds nothing.
type claimCursor struct {
	priority int32
	at       time.Time // the row's visible_at when claimed (its due_at)
	id       int64
	set      time.Time
}

// cursorFresh is how long a claim cursor is used before a claim starts
// from the head of its queue again.
const cursorFresh = time.Second

var _ stemdriver.Broker = (*Broker)(nil)

// OpenBroker connects to the Postgres server at url, migrates its schema
// when needed, and returns a broker for opts.Namespace.
func OpenBroker(ctx context.Context, url string, opts stemdriver.Options) (*Broker, error) {
	s, cfg, err := openShared(ctx, url, opts)
	if err != nil {
		return nil, err
	}
	return &Broker{role: role{s: s, name: "broker", ns: cfg.namespace, log: cfg.logger}, db: s.pool, channel: channelName("b", s.schema), done: make(chan struct{})}, nil
}

// InTx returns a view of b whose Publish (and every other method) runs in
// tx, the caller's transaction: a task published through it exists if and
// only if tx commits, and idle workers are notified at commit. The view's
// Close does nothing; it must not be used after tx ends.
func (b *Broker) InTx(tx pgx.Tx) stemdriver.Broker {
	return &Broker{role: role{s: b.s, name: "broker (in transaction)", ns: b.ns, log: b.log}, db: tx, channel: b.channel, parent: b, done: b.done}
}

// checkOpen also fails a view whose broker was closed.
func (b *Broker) checkOpen() error {
	if b.parent != nil {
		return b.parent.checkOpen()
	}
	return b.role.checkOpen()
}

// Publish stores envs as new rows in one INSERT per 5000 (in one
// transaction when there are more), then notifies idle Claims of each
// queue (see notifier; an InTx view notifies within the caller's
// transaction, so they wake at its commit).
func (b *Broker) Publish(ctx context.Context, envs ...*stemtype.Envelope) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	if len(envs) == 0 {
		return nil
	}
	n := len(envs)
	p, err := encodePublish(envs)
	if err != nil {
		return err
	}
	queues, ids := p.queues, p.ids
	run := func(ctx context.Context, q db) error {
		for start := 0; start < n; start += publishChunk {
			end := min(start+publishChunk, n)
			if _, err := q.Exec(ctx, b.s.q.publish, p.args(b.ns, start, end, b.txChannel())...); err != nil {
				return b.errorf(err, "publish %d envelopes (first %s)", end-start, ids[start])
			}
		}
		return nil
	}
	if n <= publishChunk {
		err = run(ctx, b.db)
	} else {
		err = pgx.BeginFunc(ctx, b.db, func(tx pgx.Tx) error { return run(ctx, tx) })
	}
	if err != nil {
		return err
	}
	b.notifyPublished(queues)
	return nil
}

// notifyPublished wakes idle Claims of queues once a publish committed on
// its own (a view's publish notified within its transaction). Delayed
// messages too: an idle Claim re-arms its timer for them.
func (b *Broker) notifyPublished(queues []string) {
	if b.parent != nil {
		return
	}
	var ps []string
	for _, q := range queues {
		if p := brokerPayload(b.ns, q); !slices.Contains(ps, p) {
			ps = append(ps, p)
		}
	}
	b.s.notes.send(b.channel, ps...)
}

// published is Publish's statement arrays.
type published struct {
	queues, ids []string
	prios       []int32
	nbs         []*time.Time
	payloads    [][]byte
}

// encodePublish checks and encodes envs for the publish statement.
func encodePublish(envs []*stemtype.Envelope) (*published, error) {
	n := len(envs)
	p := &published{queues: make([]string, n), prios: make([]int32, n), nbs: make([]*time.Time, n), ids: make([]string, n), payloads: make([][]byte, n)}
	for i, env := range envs {
		if err := env.Validate(); err != nil {
			return nil, fmt.Errorf("stem: postgres broker: publish: %w", err)
		}
		if env.Priority < math.MinInt32 || env.Priority > math.MaxInt32 {
			return nil, fmt.Errorf("stem: postgres broker: publish: envelope %s: priority %d out of the 32-bit range", env.ID, env.Priority)
		}
		raw, err := json.Marshal(env)
		if err != nil {
			return nil, fmt.Errorf("stem: postgres broker: publish: encode envelope %s: %w", env.ID, err)
		}
		p.queues[i], p.prios[i], p.ids[i], p.payloads[i] = env.Queue, int32(env.Priority), env.ID, raw
		if !env.NotBefore.IsZero() {
			t := env.NotBefore
			p.nbs[i] = &t
		}
	}
	return p, nil
}

// args returns the publish statement's parameters for envelopes [start,
// end).
func (p *published) args(ns string, start, end int, channel string) []any {
	return []any{ns, p.queues[start:end], p.prios[start:end], p.nbs[start:end], p.ids[start:end], p.payloads[start:end], channel}
}

// txChannel is the channel the statements of b notify within their
// transaction: a view's (InTx), so that workers wake at the caller's
// commit; none for the broker itself, whose writes commit alone and are
// notified after (see notifier).
func (b *Broker) txChannel() string {
	if b.parent != nil {
		return b.channel
	}
	return ""
}

// claimed is one row a claim returned.
type claimed struct {
	id       int64
	claims   int32
	priority int32
	due      time.Time
	payload  []byte
}

// Claim leases up to req.Max ready messages of req.Queues, read in order,
// with one UPDATE per queue. When none is ready and req.Wait is set, it
// waits for a NOTIFY of a publish to one of the queues, the next delayed
// message or expiring lease, or PollInterval, and claims again.
func (b *Broker) Claim(ctx context.Context, req stemdriver.ClaimRequest) ([]stemdriver.Delivery, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	if len(req.Queues) == 0 {
		return nil, errors.New("stem: postgres broker: claim: no queues")
	}
	if req.Max < 1 {
		return nil, fmt.Errorf("stem: postgres broker: claim: max is %d, want at least 1", req.Max)
	}
	if req.Lease <= 0 {
		return nil, fmt.Errorf("stem: postgres broker: claim: lease is %v, want a positive duration", req.Lease)
	}
	var deadline time.Time
	if req.Wait > 0 {
		deadline = time.Now().Add(req.Wait)
	}
	var w *waiter
	registered := false
	defer func() {
		if w != nil {
			w.remove()
		}
	}()
	for {
		ds, err := b.claimOnce(ctx, req)
		if len(ds) > 0 || err != nil || deadline.IsZero() {
			return ds, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, nil
		}
		if !registered {
			// Register, then claim again: a publish between the first
			// claim and the registration is not missed.
			registered = true
			wctx, cancel := context.WithDeadline(ctx, deadline)
			w, err = b.wait(wctx, req.Queues)
			cancel()
			if err != nil {
				if cerr := ctx.Err(); cerr != nil {
					return nil, cerr
				}
				// No listener: poll.
				b.log.Warn("stem: postgres broker: cannot listen for publishes; polling", "error", err.Error())
			}
			continue
		}
		pause := min(left, PollInterval)
		var next *float64 // seconds to the next delayed message or lease end
		if err := b.db.QueryRow(ctx, b.s.q.nextVisible, b.ns, req.Queues).Scan(&next); err == nil && next != nil {
			if d := time.Duration(*next * float64(time.Second)); d < pause {
				pause = max(d, time.Millisecond)
			}
		}
		timer := time.NewTimer(pause)
		var wake <-chan struct{}
		if w != nil {
			wake = w.ch
		}
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, ctx.Err()
		case <-b.done:
			timer.Stop()
			return nil, b.checkOpen()
		case <-wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// claimOnce claims from each queue in order until req.Max is reached.
func (b *Broker) claimOnce(ctx context.Context, req stemdriver.ClaimRequest) ([]stemdriver.Delivery, error) {
	var out []stemdriver.Delivery
	lease := req.Lease.Microseconds()
	for _, queue := range req.Queues {
		want := req.Max - len(out)
		if want <= 0 {
			break
		}
		got, err := b.replayLost(ctx, queue, lease)
		if err == nil && len(got) == 0 {
			cur, fromCursor := b.cursor(queue)
			got, err = b.claimRows(ctx, queue, want, lease, cur, fromCursor)
			if err == nil && len(got) == 0 && fromCursor {
				got, err = b.claimRows(ctx, queue, want, lease, cur, false)
			}
		}
		if err != nil {
			return out, err
		}
		sort.Slice(got, func(i, j int) bool {
			a, c := got[i], got[j]
			if a.priority != c.priority {
				return a.priority > c.priority
			}
			if !a.due.Equal(c.due) {
				return a.due.Before(c.due)
			}
			return a.id < c.id
		})
		if len(got) > 0 {
			last := got[len(got)-1]
			b.setCursor(queue, claimCursor{priority: last.priority, at: last.due, id: last.id})
		}
		for _, c := range got {
			d := stemdriver.Delivery{Raw: c.payload, Queue: queue, Receipt: receipt(c.id, c.claims), Redelivered: c.claims > 1}
			var env stemtype.Envelope
			if err := stemtype.DecodeEnvelope(c.payload, &env); err != nil {
				d.DecodeErr = fmt.Errorf("stem: postgres broker: message %d in queue %q: undecodable envelope: %w", c.id, queue, err)
			} else if err := env.Validate(); err != nil {
				// Written by another program: dead-lettered, never run.
				d.DecodeErr = fmt.Errorf("stem: postgres broker: message %d in queue %q: invalid envelope: %w", c.id, queue, err)
			} else {
				d.Envelope = &env
			}
			out = append(out, d)
		}
	}
	return out, nil
}

// claimRows runs one claim of queue, from cur when fromCursor is set, and
// returns the rows it leased.
func (b *Broker) claimRows(ctx context.Context, queue string, want int, lease int64, cur claimCursor, fromCursor bool) ([]claimed, error) {
	token := newClaimToken()
	sql, args := b.s.q.claim, []any{b.ns, queue, want, lease, token}
	if fromCursor {
		sql, args = b.s.q.claimAfter, append(args, cur.priority, cur.at, cur.id)
	}
	got, err := b.queryClaim(ctx, sql, args)
	if err == nil && b.loseReply != nil && b.loseReply() {
		got, err = nil, errors.New("reply lost (test)")
	}
	if err != nil {
		if b.parent == nil {
			// The claim may have committed: its rows are replayed by the
			// queue's next claim. (In a caller's transaction, a failure
			// rolls the claim back with the rest.)
			b.lostMu.Lock()
			if b.lostClaims == nil {
				b.lostClaims = make(map[string][]string)
			}
			b.lostClaims[queue] = append(b.lostClaims[queue], token)
			b.lostMu.Unlock()
		}
		return nil, b.errorf(err, "claim from queue %q", queue)
	}
	return got, nil
}

// replayLost replays the claims of queue that failed (see Broker.lostClaims):
// it returns the rows they leased that are still theirs, with the lease
// renewed. On failure the tokens are kept for the next claim.
func (b *Broker) replayLost(ctx context.Context, queue string, lease int64) ([]claimed, error) {
	if b.parent != nil {
		return nil, nil
	}
	b.lostMu.Lock()
	tokens := b.lostClaims[queue]
	delete(b.lostClaims, queue)
	b.lostMu.Unlock()
	if len(tokens) == 0 {
		return nil, nil
	}
	got, err := b.queryClaim(ctx, b.s.q.claimReplay, []any{b.ns, queue, tokens, lease})
	if err != nil {
		b.lostMu.Lock()
		if b.lostClaims == nil {
			b.lostClaims = make(map[string][]string)
		}
		b.lostClaims[queue] = append(b.lostClaims[queue], tokens...)
		b.lostMu.Unlock()
		return nil, b.errorf(err, "replay %d failed claims of queue %q", len(tokens), queue)
	}
	if len(got) > 0 {
		b.log.Info("stem: postgres broker: took back tasks of a claim whose reply was lost",
			"queue", queue, "tasks", len(got))
	}
	return got, nil
}

// newClaimToken returns a random token for one claim.
func newClaimToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// queryClaim runs a claim statement (claim, claimAfter or claimReplay)
// and reads the rows it leased.
func (b *Broker) queryClaim(ctx context.Context, sql string, args []any) ([]claimed, error) {
	var got []claimed
	read := func(rows pgx.Rows) error {
		for rows.Next() {
			var c claimed
			if err := rows.Scan(&c.id, &c.claims, &c.priority, &c.due, &c.payload); err != nil {
				return err
			}
			got = append(got, c)
		}
		return rows.Err()
	}
	var err error
	if b.parent == nil {
		err = queryAsyncCommit(ctx, b.s.pool, false, sql, args, read)
	} else {
		// In the caller's transaction, which commits as it chooses.
		var rows pgx.Rows
		if rows, err = b.db.Query(ctx, sql, args...); err == nil {
			err = read(rows)
			rows.Close()
		}
	}
	return got, err
}

// cursor returns queue's claim cursor and whether a claim should start
// from it (it is fresh; never on an InTx view).
func (b *Broker) cursor(queue string) (claimCursor, bool) {
	if b.parent != nil {
		return claimCursor{}, false
	}
	b.curMu.Lock()
	defer b.curMu.Unlock()
	c, ok := b.cursors[queue]
	return c, ok && time.Since(c.set) < cursorFresh
}

// setCursor records where queue's last claim ended; a cursor older than
// cursorFresh is replaced, a fresh one keeps its time so that a claim
// from the head comes at least every cursorFresh.
func (b *Broker) setCursor(queue string, c claimCursor) {
	if b.parent != nil {
		return
	}
	b.curMu.Lock()
	defer b.curMu.Unlock()
	if b.cursors == nil {
		b.cursors = make(map[string]claimCursor)
	}
	c.set = time.Now()
	if old, ok := b.cursors[queue]; ok && time.Since(old.set) < cursorFresh {
		c.set = old.set
	}
	b.cursors[queue] = c
}

// receipt is a claim's handle: the row id and its claim count.
func receipt(id int64, claims int32) string {
	return strconv.FormatInt(id, 10) + "." + strconv.FormatInt(int64(claims), 10)
}

// parseReceipt splits a receipt; ok is false for one this package did not
// issue.
func parseReceipt(s string) (id int64, claims int32, ok bool) {
	a, c, found := strings.Cut(s, ".")
	if !found {
		return 0, 0, false
	}
	id, err1 := strconv.ParseInt(a, 10, 64)
	n, err2 := strconv.ParseInt(c, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return id, int32(n), true
}

// lost is the error of an operation on a delivery no longer held.
func (b *Broker) lost(op string, d stemdriver.Delivery) error {
	return fmt.Errorf("stem: postgres broker: %s %s in queue %q: %w", op, d.Receipt, d.Queue, stemdriver.ErrLeaseLost)
}

// ExtendLease pushes d's lease to the server's now plus lease while d is
// held.
func (b *Broker) ExtendLease(ctx context.Context, d stemdriver.Delivery, lease time.Duration) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	if lease <= 0 {
		return fmt.Errorf("stem: postgres broker: extend lease of %s in queue %q: lease is %v, want a positive duration", d.Receipt, d.Queue, lease)
	}
	id, claims, ok := parseReceipt(d.Receipt)
	if !ok {
		return b.lost("extend lease of", d)
	}
	tag, err := b.db.Exec(ctx, b.s.q.extend, b.ns, d.Queue, id, claims, lease.Microseconds())
	if err != nil {
		return b.errorf(err, "extend lease of %s in queue %q", d.Receipt, d.Queue)
	}
	if tag.RowsAffected() == 0 {
		return b.lost("extend lease of", d)
	}
	return nil
}

// held splits ds into the arrays of a statement over several deliveries,
// in row id order (so that statements over several rows lock them in one
// order), each id once: of several deliveries of one message only the
// one with the most claims can be held (a claim counts up), so the others
// are left out, to be reported lost. bad lists the receipts this package
// did not issue.
func held(ds []stemdriver.Delivery) (queues []string, ids []int64, claims []int32, bad []string) {
	type parsed struct {
		queue  string
		id     int64
		claims int32
	}
	ps := make([]parsed, 0, len(ds))
	for _, d := range ds {
		id, c, ok := parseReceipt(d.Receipt)
		if !ok {
			bad = append(bad, d.Receipt)
			continue
		}
		ps = append(ps, parsed{d.Queue, id, c})
	}
	slices.SortFunc(ps, func(a, b parsed) int {
		if a.id != b.id {
			return cmp.Compare(a.id, b.id)
		}
		return cmp.Compare(a.claims, b.claims)
	})
	for i, p := range ps {
		if i+1 < len(ps) && ps[i+1].id == p.id {
			continue // a later claim of the same message follows
		}
		queues, ids, claims = append(queues, p.queue), append(ids, p.id), append(claims, p.claims)
	}
	return queues, ids, claims, bad
}

// Ack deletes the held deliveries of ds in one statement. Deliveries no
// longer held are left alone and reported with an error matching
// stemdriver.ErrLeaseLost.
func (b *Broker) Ack(ctx context.Context, ds ...stemdriver.Delivery) error {
	return b.finish(ctx, "ack", b.s.q.ack, ds)
}

// Release makes the held deliveries of ds ready again at once, in one
// statement, and notifies idle Claims. Deliveries no longer held are
// reported with an error matching stemdriver.ErrLeaseLost.
func (b *Broker) Release(ctx context.Context, ds ...stemdriver.Delivery) error {
	return b.finish(ctx, "release", b.s.q.release, ds)
}

// finish runs Ack's or Release's statement over ds.
func (b *Broker) finish(ctx context.Context, op, sql string, ds []stemdriver.Delivery) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	if len(ds) == 0 {
		return nil
	}
	queues, ids, claims, _ := held(ds) // receipts not ours are reported lost below
	done := make(map[string]bool, len(ids))
	// Chunks bound the statement's array_position lookups.
	for start := 0; start < len(ids); start += finishMax {
		end := min(start+finishMax, len(ids))
		args := []any{b.ns, queues[start:end], ids[start:end], claims[start:end]}
		if op == "release" {
			args = append(args, b.txChannel())
		}
		if err := b.finishChunk(ctx, sql, args, op == "release", done); err != nil {
			return b.errorf(err, "%s %d deliveries", op, len(ds))
		}
	}
	if op == "release" && b.parent == nil && len(done) > 0 {
		var ps []string
		for _, q := range queues {
			if p := brokerPayload(b.ns, q); !slices.Contains(ps, p) {
				ps = append(ps, p)
			}
		}
		b.s.notes.send(b.channel, ps...)
	}
	var lost []string
	for _, d := range ds {
		if !done[d.Receipt] {
			lost = append(lost, d.Receipt)
		}
		delete(done, d.Receipt) // the same delivery twice: the second is lost
	}
	if len(lost) > 0 {
		return fmt.Errorf("stem: postgres broker: %s: %d of %d deliveries no longer held (first %s): %w", op, len(lost), len(ds), lost[0], stemdriver.ErrLeaseLost)
	}
	return nil
}

// finishChunk runs Ack's or Release's statement once, recording the
// receipts it acted on in done.
func (b *Broker) finishChunk(ctx context.Context, sql string, args []any, counted bool, done map[string]bool) error {
	rows, err := b.db.Query(ctx, sql, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var c int32
		var n int64
		dst := []any{&id, &c}
		if counted {
			dst = append(dst, &n)
		}
		if err := rows.Scan(dst...); err != nil {
			return err
		}
		done[receipt(id, c)] = true
	}
	return rows.Err()
}

// Retry replaces d's message with next (a new row, first claimed with
// Redelivered false) in one statement, only while d is held.
func (b *Broker) Retry(ctx context.Context, d stemdriver.Delivery, next *stemtype.Envelope) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	if err := next.Validate(); err != nil {
		return fmt.Errorf("stem: postgres broker: retry: %w", err)
	}
	if next.Priority < math.MinInt32 || next.Priority > math.MaxInt32 {
		return fmt.Errorf("stem: postgres broker: retry: envelope %s: priority %d out of the 32-bit range", next.ID, next.Priority)
	}
	raw, err := json.Marshal(next)
	if err != nil {
		return fmt.Errorf("stem: postgres broker: retry: encode envelope %s: %w", next.ID, err)
	}
	id, claims, ok := parseReceipt(d.Receipt)
	if !ok {
		return b.lost("retry", d)
	}
	var nb *time.Time
	if !next.NotBefore.IsZero() {
		t := next.NotBefore
		nb = &t
	}
	var stored, notified int64
	err = b.db.QueryRow(ctx, b.s.q.retry, b.ns, d.Queue, id, claims, next.Queue, int32(next.Priority), nb, next.ID, raw, b.txChannel()).Scan(&stored, &notified)
	if err != nil {
		return b.errorf(err, "retry %s in queue %q", d.Receipt, d.Queue)
	}
	if stored == 0 {
		return b.lost("retry", d)
	}
	if b.parent == nil {
		b.s.notes.send(b.channel, brokerPayload(b.ns, next.Queue))
	}
	return nil
}

// DeadLetter moves d's message, with reason, to stem_dead_letters in one
// statement, only while d is held.
func (b *Broker) DeadLetter(ctx context.Context, d stemdriver.Delivery, reason string) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	id, claims, ok := parseReceipt(d.Receipt)
	if !ok {
		return b.lost("dead-letter", d)
	}
	tag, err := b.db.Exec(ctx, b.s.q.deadLetter, b.ns, d.Queue, id, claims, reason)
	if err != nil {
		return b.errorf(err, "dead-letter %s in queue %q", d.Receipt, d.Queue)
	}
	if tag.RowsAffected() == 0 {
		return b.lost("dead-letter", d)
	}
	return nil
}

// Depth counts the queue's ready and delayed messages, those whose lease
// expired included, and excludes held ones.
func (b *Broker) Depth(ctx context.Context, queue string) (int64, error) {
	if err := b.checkOpen(); err != nil {
		return 0, err
	}
	var n int64
	if err := b.db.QueryRow(ctx, b.s.q.depth, b.ns, queue).Scan(&n); err != nil {
		return 0, b.errorf(err, "depth of queue %q", queue)
	}
	return n, nil
}

// Close releases the broker's share of the connection pool. Closing an
// InTx view does nothing.
func (b *Broker) Close() error {
	if b.parent != nil {
		return nil
	}
	b.once.Do(func() {
		b.closed.Store(true)
		close(b.done)
		b.s.release()
	})
	return nil
}

// waiter is one idle Claim waiting for a publish to its queues.
type waiter struct {
	ch     chan struct{}
	keys   []string
	remove func()
}

// wait registers a waiter for queues with the pool's broker hub.
func (b *Broker) wait(ctx context.Context, queues []string) (*waiter, error) {
	hub := b.s.hub
	if err := hub.start(ctx, b.s.lis, b.channel); err != nil {
		return nil, err
	}
	w := &waiter{ch: make(chan struct{}, 1)}
	for _, q := range queues {
		w.keys = append(w.keys, brokerPayload(b.ns, q))
	}
	hub.mu.Lock()
	for _, k := range w.keys {
		set := hub.waiters[k]
		if set == nil {
			set = make(map[*waiter]struct{})
			hub.waiters[k] = set
		}
		set[w] = struct{}{}
	}
	hub.mu.Unlock()
	w.remove = func() {
		hub.mu.Lock()
		defer hub.mu.Unlock()
		for _, k := range w.keys {
			delete(hub.waiters[k], w)
			if len(hub.waiters[k]) == 0 {
				delete(hub.waiters, k)
			}
		}
	}
	return w, nil
}

// poke wakes w without blocking.
func (w *waiter) poke() {
	select {
	case w.ch <- struct{}{}:
	default:
	}
}

// brokerHub dispatches the broker channel's notifications of one shared
// pool to the idle Claims waiting for them. Its handler stays registered
// for the pool's life, so idle Claims never LISTEN themselves.
type brokerHub struct {
	mu      sync.Mutex
	started bool
	waiters map[string]map[*waiter]struct{} // by notification payload
}

func newBrokerHub() *brokerHub {
	return &brokerHub{waiters: make(map[string]map[*waiter]struct{})}
}

// start registers the hub's handler once (again after a failure).
func (h *brokerHub) start(ctx context.Context, lis *listener, channel string) error {
	h.mu.Lock()
	started := h.started
	h.mu.Unlock()
	if started {
		return nil
	}
	// Wait a little for the LISTEN, not for ever: while the listener
	// reconnects, idle Claims poll; the handler stays registered and
	// hears notifications once the listener is back.
	actx, cancel := context.WithTimeout(ctx, PollInterval)
	remove, err := lis.add(actx, channel, &handler{notify: h.notify, reset: h.reset})
	cancel()
	if remove == nil {
		return err
	}
	h.mu.Lock()
	if h.started {
		h.mu.Unlock()
		remove() // another Claim registered the hub meanwhile
		return nil
	}
	h.started = true
	h.mu.Unlock()
	return nil
}

func (h *brokerHub) notify(payload string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for w := range h.waiters[payload] {
		w.poke()
	}
}

// reset wakes every waiter: notifications may have been missed.
func (h *brokerHub) reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, set := range h.waiters {
		for w := range set {
			w.poke()
		}
	}
}

var _ stemdriver.DelayedLister = (*Broker)(nil)

// Delayed lists at most limit delayed messages of queue (not leased and
// not visible yet: published with a future NotBefore, or retried with a
// countdown), soonest first, and how many the queue holds
// (stemdriver.DelayedLister), in one read-only statement.
func (b *Broker) Delayed(ctx context.Context, queue string, limit int) ([]*stemtype.Envelope, int64, error) {
	if err := b.checkOpen(); err != nil {
		return nil, 0, err
	}
	rows, err := b.db.Query(ctx, b.s.q.delayed, b.ns, queue, max(limit, 0))
	if err != nil {
		return nil, 0, b.errorf(err, "list the delayed messages of queue %q", queue)
	}
	defer rows.Close()
	out := []*stemtype.Envelope{}
	var total int64
	for rows.Next() {
		var id *int64
		var payload []byte
		if err := rows.Scan(&total, &id, &payload); err != nil {
			return nil, 0, b.errorf(err, "list the delayed messages of queue %q", queue)
		}
		if id == nil {
			continue // the row that carries the count alone
		}
		var env stemtype.Envelope
		if err := stemtype.DecodeEnvelope(payload, &env); err != nil {
			return nil, 0, fmt.Errorf("stem: postgres broker: decode delayed message %d in queue %q: %w", *id, queue, err)
		}
		out = append(out, &env)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, b.errorf(err, "list the delayed messages of queue %q", queue)
	}
	return out, total, nil
}
