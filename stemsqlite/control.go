package stemsqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// subscriptionBuffer is how many messages a subscription reads ahead of
// its reader.
const subscriptionBuffer = 64

// readBatch bounds the rows a subscription or a Replies call reads at once.
const readBatch = 256

// errorBackoff is how long a subscription or a Replies call waits after a
// failed read before it reads again (unless the file changes first).
const errorBackoff = 100 * time.Millisecond

// Control is a stemdriver.ControlTransport on a SQLite file: commands are
// rows of stem_control read by every subscription after its cursor, replies
// rows of stem_replies, presence rows of stem_presence. Subscriptions and
// Replies calls are woken by the file's change watcher (see the package
// documentation). It is safe for concurrent use, from any number of
// processes.
type Control struct {
	*role

	mu   sync.Mutex
	subs map[*subscription]struct{}
}

var _ stemdriver.ControlTransport = (*Control)(nil)

// OpenControl opens the SQLite file of url (sqlite://PATH, see the package
// documentation) and returns a control transport for opts.Namespace.
func OpenControl(ctx context.Context, url string, opts stemdriver.Options) (*Control, error) {
	r, _, err := open(ctx, url, opts, "control")
	if err != nil {
		return nil, err
	}
	return &Control{role: r, subs: make(map[*subscription]struct{})}, nil
}

// The control transport's write statements (see writeQueries).
var (
	qControlInsert = wq(`INSERT INTO stem_control (namespace, target, body, created_at) VALUES (?1, ?2, ?3, ?4)`)
	qReplyInsert   = wq(`INSERT INTO stem_replies (namespace, request_id, body, created_at) VALUES (?1, ?2, ?3, ?4)`)
	qPresenceGet   = wq(`SELECT instance, body FROM stem_presence WHERE namespace = ?1 AND worker_id = ?2 AND expires_at > ?3`)
	qPresencePut   = wq(`INSERT INTO stem_presence (namespace, worker_id, instance, body, expires_at)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (namespace, worker_id) DO UPDATE SET
	instance = excluded.instance, body = excluded.body, expires_at = excluded.expires_at`)
)

// Publish stores msg once for every target (once for all workers when
// targets is empty or holds stemtype.BroadcastTarget), in one transaction,
// and wakes the subscriptions.
func (c *Control) Publish(ctx context.Context, targets []string, msg []byte) error {
	if err := c.check(ctx, "publish"); err != nil {
		return err
	}
	if msg == nil {
		msg = []byte{} // an empty message, not NULL
	}
	to := []string{stemtype.BroadcastTarget}
	if len(targets) > 0 && !slices.Contains(targets, stemtype.BroadcastTarget) {
		to = slices.Compact(slices.Sorted(slices.Values(targets)))
	}
	now := nanos(time.Now())
	err := c.st.writeTx(ctx, c.logger, "control publish", func(tx *sql.Tx) error {
		for _, t := range to {
			if _, err := c.st.txExec(ctx, tx, qControlInsert, c.ns, t, msg, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return c.errorf(err, "publish to %v", to)
	}
	c.st.watch.notify()
	return nil
}

// Subscribe opens a subscription for workerID that delivers the messages
// published after Subscribe returns, addressed to workerID or to every
// worker. It is closed when it or c is closed.
func (c *Control) Subscribe(ctx context.Context, workerID string) (stemdriver.ControlSubscription, error) {
	if workerID == "" {
		return nil, errors.New("stem: sqlite control subscribe: empty worker id")
	}
	if err := c.check(ctx, "subscribe"); err != nil {
		return nil, err
	}
	var cursor int64
	if err := c.st.read.QueryRowContext(ctx, `SELECT coalesce(max(seq), 0) FROM stem_control`).Scan(&cursor); err != nil {
		return nil, c.errorf(err, "subscribe %s", workerID)
	}
	sub := &subscription{c: c, workerID: workerID, cursor: cursor,
		ch: make(chan []byte, subscriptionBuffer), stop: make(chan struct{}), done: make(chan struct{})}
	c.mu.Lock()
	if c.isClosed() {
		c.mu.Unlock()
		return nil, fmt.Errorf("stem: sqlite control subscribe: %w", stemdriver.ErrClosed)
	}
	c.subs[sub] = struct{}{}
	c.mu.Unlock()
	go sub.run()
	return sub, nil
}

// subscription is one worker's control subscription: a goroutine that
// reads the rows after its cursor whenever the file changes.
type subscription struct {
	c        *Control
	workerID string
	cursor   int64 // the last seq read
	ch       chan []byte
	stop     chan struct{}
	once     sync.Once
	done     chan struct{}
}

var _ stemdriver.ControlSubscription = (*subscription)(nil)

// C delivers the messages addressed to the worker; it is closed by Close.
func (s *subscription) C() <-chan []byte { return s.ch }

// Close ends the subscription and closes C. It is safe to call more than
// once.
func (s *subscription) Close() error {
	s.once.Do(func() { close(s.stop) })
	<-s.done
	s.c.mu.Lock()
	delete(s.c.subs, s)
	s.c.mu.Unlock()
	return nil
}

type row struct {
	seq  int64
	body []byte
}

func (s *subscription) run() {
	defer close(s.done)
	defer close(s.ch)
	wake, done := s.c.st.watch.wait()
	defer done()
	var retry *time.Timer
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	for {
		rows, err := s.read()
		var backoff <-chan time.Time
		if err != nil {
			s.c.logger.Warn("stem: sqlite control: subscription read failed", "worker_id", s.workerID, "error", err)
			if retry == nil {
				retry = time.NewTimer(errorBackoff)
			} else {
				retry.Reset(errorBackoff)
			}
			backoff = retry.C
		}
		for _, r := range rows {
			select {
			case s.ch <- r.body:
				s.cursor = r.seq
			case <-s.stop:
				return
			}
		}
		if len(rows) == readBatch {
			wake = s.c.st.watch.current()
			continue
		}
		select {
		case <-s.stop:
			return
		case <-wake:
		case <-backoff:
		}
		wake = s.c.st.watch.current()
	}
}

// read returns the rows after the cursor addressed to the worker.
func (s *subscription) read() ([]row, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	rows, err := s.c.st.read.QueryContext(ctx, `SELECT seq, body FROM stem_control
WHERE seq > ?1 AND namespace = ?2 AND target IN ('*', ?3) ORDER BY seq LIMIT ?4`,
		s.cursor, s.c.ns, s.workerID, readBatch)
	if err != nil {
		return nil, err
	}
	return scanRows(rows)
}

func scanRows(rows *sql.Rows) ([]row, error) {
	defer rows.Close()
	var out []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.seq, &r.body); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Reply stores msg under requestID; replies are kept for 5 minutes.
func (c *Control) Reply(ctx context.Context, requestID string, msg []byte) error {
	if err := c.check(ctx, "reply"); err != nil {
		return err
	}
	if requestID == "" {
		return errors.New("stem: sqlite control reply: empty request id")
	}
	if msg == nil {
		msg = []byte{} // an empty reply, not NULL
	}
	err := c.st.writeTx(ctx, c.logger, "reply", func(tx *sql.Tx) error {
		_, err := c.st.txExec(ctx, tx, qReplyInsert, c.ns, requestID, msg, nanos(time.Now()))
		return err
	})
	if err != nil {
		return c.errorf(err, "reply to %s", requestID)
	}
	c.st.watch.notify()
	return nil
}

// Replies calls fn with every reply stored under requestID, in order, those
// stored before the call included, until fn returns false (then it returns
// nil) or ctx ends (then it returns ctx.Err()).
func (c *Control) Replies(ctx context.Context, requestID string, fn func(msg []byte) bool) error {
	if err := c.check(ctx, "replies"); err != nil {
		return err
	}
	wake, done := c.st.watch.wait()
	defer done()
	var cursor int64
	var retry *time.Timer
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	for {
		rs, err := c.st.read.QueryContext(ctx, `SELECT seq, body FROM stem_replies
WHERE namespace = ?1 AND request_id = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4`, c.ns, requestID, cursor, readBatch)
		var rows []row
		if err == nil {
			rows, err = scanRows(rs)
		}
		var backoff <-chan time.Time
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if c.isClosed() {
				return fmt.Errorf("stem: sqlite control replies: %w", stemdriver.ErrClosed)
			}
			c.logger.Warn("stem: sqlite control: replies read failed", "request_id", requestID, "error", err)
			if retry == nil {
				retry = time.NewTimer(errorBackoff)
			} else {
				retry.Reset(errorBackoff)
			}
			backoff = retry.C
		}
		for _, r := range rows {
			cursor = r.seq
			if !fn(r.body) {
				return nil
			}
		}
		if len(rows) == readBatch {
			wake = c.st.watch.current()
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.closed:
			return fmt.Errorf("stem: sqlite control replies: %w", stemdriver.ErrClosed)
		case <-wake:
		case <-backoff:
		}
		wake = c.st.watch.current()
	}
}

// Announce records info as live until ttl passes without another Announce,
// checking and writing in one transaction. While another instance's
// announcement of the same id is live, it changes nothing and returns a
// *stemdriver.WorkerIDTakenError naming that one.
func (c *Control) Announce(ctx context.Context, info stemtype.WorkerInfo, ttl time.Duration) error {
	if err := c.check(ctx, "announce"); err != nil {
		return err
	}
	info, body, err := stemdriver.PrepareAnnounce(info, ttl, c.ns)
	if err != nil {
		return fmt.Errorf("stem: sqlite control announce: %w", err)
	}
	var taken *stemdriver.WorkerIDTakenError
	err = c.st.writeTx(ctx, c.logger, "announce", func(tx *sql.Tx) error {
		taken = nil
		now := time.Now()
		var instance string
		var live []byte
		err := c.st.txQueryRow(ctx, tx, qPresenceGet, c.ns, info.ID, nanos(now)).Scan(&instance, &live)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return err
		case instance != info.Instance:
			var held stemtype.WorkerInfo
			if err := json.Unmarshal(live, &held); err != nil {
				held = stemtype.WorkerInfo{ID: info.ID, Instance: instance}
			}
			taken = &stemdriver.WorkerIDTakenError{Live: held}
			return nil
		}
		_, err = c.st.txExec(ctx, tx, qPresencePut, c.ns, info.ID, info.Instance, body, nanos(now.Add(ttl)))
		return err
	})
	if err != nil {
		return c.errorf(err, "announce %s", info.ID)
	}
	if taken != nil {
		return taken
	}
	return nil
}

// Withdraw forgets the worker workerID when its announcement carries
// instance; forgetting an unknown worker, or another instance's, does
// nothing.
func (c *Control) Withdraw(ctx context.Context, workerID, instance string) error {
	if err := c.check(ctx, "withdraw"); err != nil {
		return err
	}
	err := c.st.writeTx(ctx, c.logger, "withdraw", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM stem_presence WHERE namespace = ?1 AND worker_id = ?2 AND instance = ?3`,
			c.ns, workerID, instance)
		return err
	})
	if err != nil {
		return c.errorf(err, "withdraw %s", workerID)
	}
	return nil
}

// Workers lists the live workers of the namespace, ordered by id.
func (c *Control) Workers(ctx context.Context) ([]stemtype.WorkerInfo, error) {
	if err := c.check(ctx, "workers"); err != nil {
		return nil, err
	}
	rows, err := c.st.read.QueryContext(ctx, `SELECT worker_id, body FROM stem_presence
WHERE namespace = ?1 AND expires_at > ?2 ORDER BY worker_id`, c.ns, nanos(time.Now()))
	if err != nil {
		return nil, c.errorf(err, "list workers")
	}
	defer rows.Close()
	out := []stemtype.WorkerInfo{}
	for rows.Next() {
		var id string
		var body []byte
		if err := rows.Scan(&id, &body); err != nil {
			return nil, c.errorf(err, "list workers")
		}
		var info stemtype.WorkerInfo
		if err := json.Unmarshal(body, &info); err != nil {
			return nil, fmt.Errorf("stem: sqlite control (%s): announcement of worker %s does not decode: %w", c.st.path, id, err)
		}
		out = append(out, info)
	}
	if err := rows.Err(); err != nil {
		return nil, c.errorf(err, "list workers")
	}
	return out, nil
}

// Close closes c and every subscription opened through it; a Replies call
// blocked on c returns stemdriver.ErrClosed. The file's handle closes with
// the last driver open on it. Close is idempotent.
func (c *Control) Close() error {
	c.mu.Lock()
	subs := make([]*subscription, 0, len(c.subs))
	for s := range c.subs {
		subs = append(subs, s)
	}
	// Mark closed under mu, so that no Subscribe adds one after this.
	c.markClosed()
	c.mu.Unlock()
	for _, s := range subs {
		_ = s.Close()
	}
	return c.close()
}
