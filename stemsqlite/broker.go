package stemsqlite

import (
	"cmp"
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

// Task row states (stem_tasks.state).
const (
	rowReady   = 0
	rowDelayed = 1
	rowLeased  = 2
)

// Broker is a stemdriver.Broker on a SQLite file: one row of stem_tasks per
// message. It is safe for concurrent use, and any number of processes may
// share the file. See the package documentation for the schema.
type Broker struct {
	*role
}

var _ stemdriver.Broker = (*Broker)(nil)

// OpenBroker opens the SQLite file of url (sqlite://PATH, see the package
// documentation) and returns a broker for opts.Namespace. The file is
// created, with its schema, when it does not exist; its directory must.
func OpenBroker(ctx context.Context, url string, opts stemdriver.Options) (*Broker, error) {
	r, _, err := open(ctx, url, opts, "broker")
	if err != nil {
		return nil, err
	}
	return &Broker{role: r}, nil
}

const insertTask = `INSERT INTO stem_tasks (namespace, queue, priority, sort_at, state, visible_at, task_id, body)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)`

// heldWhere selects the row of a delivery while it is held: its claim count
// is still the one of the delivery's claim, and it was not released. A row
// of that claim count that is ready again is held still when its lease
// expired (visible_at is the lease's end) until another claim takes it, and
// not when Release made it ready (visible_at 0): a released delivery's
// receipt must not ack, extend, retry or dead-letter the message.
const heldWhere = `id = ?1 AND claims = ?2 AND namespace = ?3 AND queue = ?4 AND (state = 2 OR visible_at > 0)`

// The broker's write statements (see writeQueries).
var (
	_ = wq(insertTask)
	// qPromote makes the delayed messages now due, and those whose
	// lease expired, ready.
	qPromote = wq(`UPDATE stem_tasks SET state = 0
WHERE namespace = ?1 AND queue = ?2 AND state <> 0 AND visible_at <= ?3`)
	// qClaim leases the first ready messages of a queue.
	qClaim = wq(`UPDATE stem_tasks SET state = 2, visible_at = ?4, claims = claims + 1
WHERE id IN (SELECT id FROM stem_tasks WHERE namespace = ?1 AND queue = ?2 AND state = 0
	ORDER BY priority DESC, sort_at, id LIMIT ?3)
RETURNING id, claims, priority, sort_at, body`)
	// qNextDue is when a queue's first delayed or leased message becomes
	// claimable.
	qNextDue = wq(`SELECT min(visible_at) FROM stem_tasks WHERE namespace = ?1 AND queue = ?2 AND state <> 0`)
	qExtend  = wq(`UPDATE stem_tasks SET state = 2, visible_at = ?5 WHERE ` + heldWhere)
	qDelete  = wq(`DELETE FROM stem_tasks WHERE ` + heldWhere)
	qRelease = wq(`UPDATE stem_tasks SET state = 0, visible_at = 0 WHERE ` + heldWhere)
)

// insert stores env (encoded as raw) as a new message.
func (b *Broker) insert(ctx context.Context, stmt *sql.Stmt, env *stemtype.Envelope, raw []byte, now time.Time, stamp int64) error {
	sortAt, state, visible := stamp, rowReady, int64(0)
	if env.NotBefore.After(now) {
		// A delayed message takes its place in the queue by due time.
		nb := max(nanos(env.NotBefore), 1)
		sortAt, state, visible = nb, rowDelayed, nb
	}
	_, err := stmt.ExecContext(ctx, b.ns, env.Queue, env.Priority, sortAt, state, visible, env.ID, raw)
	return err
}

// Publish stores every envelope as a message of its own, all in one
// transaction: all are stored, or none.
func (b *Broker) Publish(ctx context.Context, envs ...*stemtype.Envelope) error {
	if err := b.check(ctx, "publish"); err != nil {
		return err
	}
	raws, err := stemdriver.EncodeEnvelopes(envs)
	if err != nil {
		return fmt.Errorf("stem: sqlite broker publish: %w", err)
	}
	if len(envs) == 0 {
		return nil
	}
	now := time.Now()
	stamp := b.st.stamp(now)
	err = b.st.writeTx(ctx, b.logger, "publish", func(tx *sql.Tx) error {
		stmt, err := b.st.txPrepare(ctx, tx, insertTask)
		if err != nil {
			return err
		}
		for i, env := range envs {
			if err := b.insert(ctx, stmt, env, raws[i], now, stamp); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return b.errorf(err, "publish %d messages (first %s)", len(envs), envs[0].ID)
	}
	b.st.watch.notify()
	return nil
}

// claimed is one row taken by a claim.
type claimed struct {
	id, claims, priority, sortAt int64
	queue                        string
	body                         []byte
}

// Claim leases up to req.Max ready messages, reading req.Queues in order,
// in one write transaction. When none is ready it waits up to req.Wait for
// a change to the file (see the package documentation), the next delayed
// message or expiring lease, ctx's end or Close.
func (b *Broker) Claim(ctx context.Context, req stemdriver.ClaimRequest) ([]stemdriver.Delivery, error) {
	if err := b.check(ctx, "claim"); err != nil {
		return nil, err
	}
	switch {
	case len(req.Queues) == 0:
		return nil, errors.New("stem: sqlite broker claim: no queues given")
	case req.Max < 1:
		return nil, fmt.Errorf("stem: sqlite broker claim: max is %d, want at least 1", req.Max)
	case req.Lease <= 0:
		return nil, fmt.Errorf("stem: sqlite broker claim: lease is %v, want a positive duration", req.Lease)
	}
	deadline := time.Now().Add(req.Wait)
	var (
		wake  <-chan struct{}
		timer *time.Timer
	)
	if req.Wait > 0 {
		var done func()
		wake, done = b.st.watch.wait()
		defer done()
	}
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		now := time.Now()
		var (
			next int64 // when a delayed or leased message becomes claimable; 0 none
			ds   []stemdriver.Delivery
		)
		// Look before taking the write lock: an idle consumer's claims
		// then never queue behind, or hold up, other writers.
		ready, next, err := b.anyReady(ctx, req.Queues, now)
		if err == nil && ready {
			ds, next, err = b.claimOnce(ctx, req, now)
		}
		if err != nil || len(ds) > 0 || !now.Before(deadline) {
			return ds, err
		}
		until := deadline
		if next > 0 {
			if t := time.Unix(0, next); t.Before(until) {
				until = t
			}
		}
		d := max(time.Until(until), time.Millisecond)
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-b.closed:
			return nil, fmt.Errorf("stem: sqlite broker claim: %w", stemdriver.ErrClosed)
		case <-wake:
			wake = b.st.watch.current()
		case <-timer.C:
			wake = b.st.watch.current()
		}
	}
}

// anyReady reports, from a read, whether one of queues may have a
// claimable message, and otherwise when the first delayed or leased one
// becomes claimable (0 for none).
func (b *Broker) anyReady(ctx context.Context, queues []string, now time.Time) (bool, int64, error) {
	n := nanos(now)
	var next int64
	for _, q := range queues {
		var ready bool
		var nextQ sql.NullInt64
		err := b.st.read.QueryRowContext(ctx, `SELECT
	EXISTS (SELECT 1 FROM stem_tasks WHERE namespace = ?1 AND queue = ?2 AND state = 0),
	(SELECT min(visible_at) FROM stem_tasks WHERE namespace = ?1 AND queue = ?2 AND state <> 0)`,
			b.ns, q).Scan(&ready, &nextQ)
		if err != nil {
			if b.isClosed() {
				return false, 0, fmt.Errorf("stem: sqlite broker claim: %w", stemdriver.ErrClosed)
			}
			return false, 0, b.errorf(err, "claim: look for ready messages in queue %q", q)
		}
		if ready || (nextQ.Valid && nextQ.Int64 <= n) {
			return true, 0, nil
		}
		if nextQ.Valid && (next == 0 || nextQ.Int64 < next) {
			next = nextQ.Int64
		}
	}
	return false, next, nil
}

// claimOnce leases up to req.Max messages in one write transaction. When it
// finds none it also returns when the first delayed or leased message of
// the queues becomes claimable (0 for none).
func (b *Broker) claimOnce(ctx context.Context, req stemdriver.ClaimRequest, now time.Time) ([]stemdriver.Delivery, int64, error) {
	n := nanos(now)
	leaseUntil := nanos(now.Add(req.Lease))
	var rows []claimed
	var next int64
	err := b.st.writeTx(ctx, b.logger, "claim", func(tx *sql.Tx) error {
		rows, next = rows[:0], 0
		for _, q := range req.Queues {
			// Delayed messages now due and expired leases become ready.
			if _, err := b.st.txExec(ctx, tx, qPromote, b.ns, q, n); err != nil {
				return fmt.Errorf("queue %q: promote due messages: %w", q, err)
			}
			res, err := b.st.txQuery(ctx, tx, qClaim, b.ns, q, req.Max-len(rows), leaseUntil)
			if err != nil {
				return fmt.Errorf("queue %q: %w", q, err)
			}
			start := len(rows)
			for res.Next() {
				c := claimed{queue: q}
				if err := res.Scan(&c.id, &c.claims, &c.priority, &c.sortAt, &c.body); err != nil {
					_ = res.Close()
					return fmt.Errorf("queue %q: %w", q, err)
				}
				rows = append(rows, c)
			}
			if err := res.Close(); err != nil {
				return fmt.Errorf("queue %q: %w", q, err)
			}
			// RETURNING gives rows in no promised order: put this
			// queue's back in claim order.
			slices.SortFunc(rows[start:], func(a, b claimed) int {
				return cmp.Or(cmp.Compare(b.priority, a.priority), cmp.Compare(a.sortAt, b.sortAt), cmp.Compare(a.id, b.id))
			})
			if len(rows) >= req.Max {
				return nil
			}
		}
		if len(rows) > 0 || req.Wait <= 0 {
			return nil
		}
		for _, q := range req.Queues {
			var nextQ sql.NullInt64
			if err := b.st.txQueryRow(ctx, tx, qNextDue, b.ns, q).Scan(&nextQ); err != nil {
				return fmt.Errorf("queue %q: next due message: %w", q, err)
			}
			if nextQ.Valid && (next == 0 || nextQ.Int64 < next) {
				next = nextQ.Int64
			}
		}
		return nil
	})
	if err != nil {
		if b.isClosed() {
			return nil, 0, fmt.Errorf("stem: sqlite broker claim: %w", stemdriver.ErrClosed)
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, 0, ctxErr
		}
		return nil, 0, b.errorf(err, "claim")
	}
	ds := make([]stemdriver.Delivery, len(rows))
	for i, c := range rows {
		ds[i] = b.delivery(c)
	}
	return ds, next, nil
}

// delivery builds the Delivery of a claimed row.
func (b *Broker) delivery(c claimed) stemdriver.Delivery {
	d := stemdriver.Delivery{
		Raw:         c.body,
		Queue:       c.queue,
		Receipt:     strconv.FormatInt(c.id, 10) + "." + strconv.FormatInt(c.claims, 10),
		Redelivered: c.claims > 1,
	}
	var env stemtype.Envelope
	if err := stemtype.DecodeEnvelope(c.body, &env); err != nil {
		d.DecodeErr = fmt.Errorf("stem: sqlite broker: decode message %d in queue %s: %w", c.id, c.queue, err)
		b.logger.Warn("stem: sqlite broker: undecodable message", "queue", c.queue, "row", c.id, "error", err)
		return d
	}
	if err := env.Validate(); err != nil {
		// Written by another program: dead-lettered, never run.
		d.DecodeErr = fmt.Errorf("stem: sqlite broker: invalid message %d in queue %s: %w", c.id, c.queue, err)
		b.logger.Warn("stem: sqlite broker: invalid message", "queue", c.queue, "row", c.id, "error", err)
		return d
	}
	d.Envelope = &env
	return d
}

// receipt is a parsed Delivery.Receipt: the row and its claim count.
type receipt struct{ id, claims int64 }

// parseReceipt parses d's receipt. A receipt this package did not issue
// cannot be held, so its error matches stemdriver.ErrLeaseLost.
func (b *Broker) parseReceipt(op string, d stemdriver.Delivery) (receipt, error) {
	a, c, ok := strings.Cut(d.Receipt, ".")
	id, err1 := strconv.ParseInt(a, 10, 64)
	claims, err2 := strconv.ParseInt(c, 10, 64)
	if !ok || err1 != nil || err2 != nil || id <= 0 || claims <= 0 || d.Queue == "" {
		return receipt{}, fmt.Errorf("stem: sqlite broker %s: receipt %q of queue %q is not one this broker issued: %w",
			op, d.Receipt, d.Queue, stemdriver.ErrLeaseLost)
	}
	return receipt{id: id, claims: claims}, nil
}

func leaseLost(op string, d stemdriver.Delivery) error {
	return fmt.Errorf("stem: sqlite broker %s: receipt %q of queue %q: %w", op, d.Receipt, d.Queue, stemdriver.ErrLeaseLost)
}

// ExtendLease pushes the lease of d to now+lease. A holder whose lease
// expired keeps the message until another consumer re-claims it.
func (b *Broker) ExtendLease(ctx context.Context, d stemdriver.Delivery, lease time.Duration) error {
	if err := b.check(ctx, "extend lease"); err != nil {
		return err
	}
	if lease <= 0 {
		return fmt.Errorf("stem: sqlite broker extend lease: lease is %v, want a positive duration", lease)
	}
	rc, err := b.parseReceipt("extend lease", d)
	if err != nil {
		return err
	}
	var n int64
	err = b.st.writeTx(ctx, b.logger, "extend lease", func(tx *sql.Tx) error {
		res, err := b.st.txExec(ctx, tx, qExtend, rc.id, rc.claims, b.ns, d.Queue, nanos(time.Now().Add(lease)))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return b.errorf(err, "extend lease of %s in queue %q", d.Receipt, d.Queue)
	}
	if n == 0 {
		return leaseLost("extend lease", d)
	}
	return nil
}

// eachHeld runs query (with the held row's parameters ?1-?4) for every
// delivery of ds in one transaction, and reports those whose row it did not
// change, joined, with errors matching stemdriver.ErrLeaseLost.
func (b *Broker) eachHeld(ctx context.Context, op, query string, ds []stemdriver.Delivery) (changed bool, _ error) {
	if err := b.check(ctx, op); err != nil {
		return false, err
	}
	var errs []error
	rcs := make([]receipt, len(ds))
	for i, d := range ds {
		rc, err := b.parseReceipt(op, d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rcs[i] = rc
	}
	var lost []error
	err := b.st.writeTx(ctx, b.logger, op, func(tx *sql.Tx) error {
		lost, changed = lost[:0], false
		stmt, err := b.st.txPrepare(ctx, tx, query)
		if err != nil {
			return err
		}
		for i, d := range ds {
			if rcs[i].id == 0 {
				continue
			}
			res, err := stmt.ExecContext(ctx, rcs[i].id, rcs[i].claims, b.ns, d.Queue)
			if err != nil {
				return err
			}
			n, err := res.RowsAffected()
			if err != nil {
				return err
			}
			if n == 0 {
				lost = append(lost, leaseLost(op, d))
			} else {
				changed = true
			}
		}
		return nil
	})
	if err != nil {
		return false, b.errorf(err, "%s %d deliveries", op, len(ds))
	}
	return changed, errors.Join(append(errs, lost...)...)
}

// Ack deletes the messages of ds, in one transaction. Deliveries no longer
// held are reported, joined, with errors matching stemdriver.ErrLeaseLost;
// the others are still deleted.
func (b *Broker) Ack(ctx context.Context, ds ...stemdriver.Delivery) error {
	_, err := b.eachHeld(ctx, "ack", qDelete, ds)
	return err
}

// Release makes the messages of ds ready at once, unchanged, in their
// original place in the queue order, in one transaction. Deliveries no
// longer held are left alone and reported with errors matching
// stemdriver.ErrLeaseLost.
func (b *Broker) Release(ctx context.Context, ds ...stemdriver.Delivery) error {
	changed, err := b.eachHeld(ctx, "release", qRelease, ds)
	if changed {
		b.st.watch.notify()
	}
	return err
}

// Retry replaces the message of d with next in one transaction, only while
// d is held: a Retry of a delivery already retried, acked or taken over
// returns an error matching stemdriver.ErrLeaseLost and stores nothing.
func (b *Broker) Retry(ctx context.Context, d stemdriver.Delivery, next *stemtype.Envelope) error {
	if err := b.check(ctx, "retry"); err != nil {
		return err
	}
	if err := next.Validate(); err != nil {
		return fmt.Errorf("stem: sqlite broker retry: %w", err)
	}
	raw, err := json.Marshal(next)
	if err != nil {
		return fmt.Errorf("stem: sqlite broker retry: encode envelope %s: %w", next.ID, err)
	}
	rc, err := b.parseReceipt("retry", d)
	if err != nil {
		return err
	}
	now := time.Now()
	stamp := b.st.stamp(now)
	var held bool
	err = b.st.writeTx(ctx, b.logger, "retry", func(tx *sql.Tx) error {
		res, err := b.st.txExec(ctx, tx, qDelete, rc.id, rc.claims, b.ns, d.Queue)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if held = n == 1; !held {
			return nil
		}
		stmt, err := b.st.txPrepare(ctx, tx, insertTask)
		if err != nil {
			return err
		}
		return b.insert(ctx, stmt, next, raw, now, stamp)
	})
	if err != nil {
		return b.errorf(err, "retry %s of queue %q as %s", d.Receipt, d.Queue, next.ID)
	}
	if !held {
		return leaseLost("retry", d)
	}
	b.st.watch.notify()
	return nil
}

// DeadLetter moves the message of d, with reason, from its queue to
// stem_dead_letters, in one transaction; DeadLetters lists them.
func (b *Broker) DeadLetter(ctx context.Context, d stemdriver.Delivery, reason string) error {
	if err := b.check(ctx, "dead letter"); err != nil {
		return err
	}
	rc, err := b.parseReceipt("dead letter", d)
	if err != nil {
		return err
	}
	var held bool
	err = b.st.writeTx(ctx, b.logger, "dead letter", func(tx *sql.Tx) error {
		var taskID string
		var body []byte
		err := tx.QueryRowContext(ctx, `DELETE FROM stem_tasks WHERE `+heldWhere+` RETURNING task_id, body`,
			rc.id, rc.claims, b.ns, d.Queue).Scan(&taskID, &body)
		if errors.Is(err, sql.ErrNoRows) {
			held = false
			return nil
		}
		if err != nil {
			return err
		}
		held = true
		_, err = tx.ExecContext(ctx, `INSERT INTO stem_dead_letters (namespace, queue, task_id, body, reason, created_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)`, b.ns, d.Queue, taskID, body, reason, nanos(time.Now()))
		return err
	})
	if err != nil {
		return b.errorf(err, "dead letter %s of queue %q", d.Receipt, d.Queue)
	}
	if !held {
		return leaseLost("dead letter", d)
	}
	return nil
}

// DeadLetter is a message removed from its queue by Broker.DeadLetter.
type DeadLetter struct {
	// Queue is the queue the message was in.
	Queue string
	// TaskID is the id of the task the message carried.
	TaskID string
	// Raw is the message as it was stored.
	Raw []byte
	// Reason is why it was dead-lettered.
	Reason string
	// At is when it was dead-lettered.
	At time.Time
}

// DeadLetters returns the dead letters of queue in the broker's namespace,
// oldest first, at most limit of them (all when limit <= 0).
func (b *Broker) DeadLetters(ctx context.Context, queue string, limit int) ([]DeadLetter, error) {
	if err := b.check(ctx, "dead letters"); err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = math.MaxInt32
	}
	rows, err := b.st.read.QueryContext(ctx, `SELECT task_id, body, reason, created_at FROM stem_dead_letters
WHERE namespace = ?1 AND queue = ?2 ORDER BY id LIMIT ?3`, b.ns, queue, limit)
	if err != nil {
		return nil, b.errorf(err, "list dead letters of queue %q", queue)
	}
	defer rows.Close()
	var out []DeadLetter
	for rows.Next() {
		dl := DeadLetter{Queue: queue}
		var at int64
		if err := rows.Scan(&dl.TaskID, &dl.Raw, &dl.Reason, &at); err != nil {
			return nil, b.errorf(err, "list dead letters of queue %q", queue)
		}
		dl.At = time.Unix(0, at)
		out = append(out, dl)
	}
	if err := rows.Err(); err != nil {
		return nil, b.errorf(err, "list dead letters of queue %q", queue)
	}
	return out, nil
}

// Depth counts the ready and delayed messages of queue; a message whose
// lease expired counts as ready.
func (b *Broker) Depth(ctx context.Context, queue string) (int64, error) {
	if err := b.check(ctx, "depth"); err != nil {
		return 0, err
	}
	var n int64
	err := b.st.read.QueryRowContext(ctx, `SELECT count(*) FROM stem_tasks
WHERE namespace = ?1 AND queue = ?2 AND (state <> 2 OR visible_at <= ?3)`, b.ns, queue, nanos(time.Now())).Scan(&n)
	if err != nil {
		return 0, b.errorf(err, "depth of queue %q", queue)
	}
	return n, nil
}

// Close closes b; a Claim blocked on b returns stemdriver.ErrClosed. The
// file's handle closes with the last driver open on it. Close is
// idempotent.
func (b *Broker) Close() error { return b.close() }

// Delayed lists at most limit delayed messages of queue, soonest first,
// and how many it holds (stemdriver.DelayedLister).
func (b *Broker) Delayed(ctx context.Context, queue string, limit int) ([]*stemtype.Envelope, int64, error) {
	if err := b.check(ctx, "list delayed"); err != nil {
		return nil, 0, err
	}
	now := nanos(time.Now())
	var total int64
	err := b.st.read.QueryRowContext(ctx, `SELECT count(*) FROM stem_tasks
WHERE namespace = ?1 AND queue = ?2 AND state = ?4 AND visible_at > ?3`, b.ns, queue, now, rowDelayed).Scan(&total)
	if err != nil {
		return nil, 0, b.errorf(err, "count the delayed messages of queue %q", queue)
	}
	rows, err := b.st.read.QueryContext(ctx, `SELECT id, body FROM stem_tasks
WHERE namespace = ?1 AND queue = ?2 AND state = ?5 AND visible_at > ?3
ORDER BY visible_at, id LIMIT ?4`, b.ns, queue, now, max(limit, 0), rowDelayed)
	if err != nil {
		return nil, 0, b.errorf(err, "list the delayed messages of queue %q", queue)
	}
	defer rows.Close()
	out := []*stemtype.Envelope{}
	for rows.Next() {
		var id int64
		var body []byte
		if err := rows.Scan(&id, &body); err != nil {
			return nil, 0, b.errorf(err, "list the delayed messages of queue %q", queue)
		}
		var env stemtype.Envelope
		if err := stemtype.DecodeEnvelope(body, &env); err != nil {
			return nil, 0, fmt.Errorf("stem: sqlite broker: decode delayed message %d in queue %s: %w", id, queue, err)
		}
		out = append(out, &env)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, b.errorf(err, "list the delayed messages of queue %q", queue)
	}
	return out, total, nil
}
