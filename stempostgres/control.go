package stempostgres

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// maxInline is the largest NOTIFY payload Control sends: Postgres refuses
// payloads of 8000 bytes or more. A larger message goes through
// stem_control_messages and its notification carries the row id.
const maxInline = 7900

// subBuffer is how many control messages a subscription holds for a worker
// busy reading earlier ones; past it, messages are dropped and logged.
const subQueueLimit = 10000

// Control is a stemdriver.ControlTransport on Postgres: commands travel by
// NOTIFY on a channel named after the schema and namespace (NOTIFY is per
// database, so the name carries the rest of the scope), inline when small
// and through stem_control_messages otherwise; replies are rows of
// stem_control_replies, announced by NOTIFY on a second channel and kept
// two minutes; presence is stem_workers. It is safe for concurrent use.
type Control struct {
	role
	cmdChannel   string
	replyChannel string

	pruneMu   sync.Mutex
	lastPrune time.Time

	mu   sync.Mutex
	subs map[*subscription]struct{}
}

var _ stemdriver.ControlTransport = (*Control)(nil)

// OpenControl connects to the Postgres server at url, migrates its schema
// when needed, and returns a control transport for opts.Namespace.
func OpenControl(ctx context.Context, url string, opts stemdriver.Options) (*Control, error) {
	s, cfg, err := openShared(ctx, url, opts)
	if err != nil {
		return nil, err
	}
	return &Control{
		role:         role{s: s, name: "control", ns: cfg.namespace, log: cfg.logger},
		cmdChannel:   channelName("c", s.schema, cfg.namespace),
		replyChannel: channelName("r", s.schema, cfg.namespace),
		subs:         make(map[*subscription]struct{}),
		lastPrune:    time.Now(),
	}, nil
}

// Publish sends msg to the namespace's subscribers (no targets, or
// stemtype.BroadcastTarget among them) or to the named workers' ones, in
// one statement: a NOTIFY carrying the targets and msg when it fits, else
// an INSERT of the message and a NOTIFY of its id.
func (c *Control) Publish(ctx context.Context, targets []string, msg []byte) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	if msg == nil {
		msg = []byte{} // an empty message, not NULL
	}
	if slices.Contains(targets, stemtype.BroadcastTarget) {
		targets = nil
	}
	if targets == nil {
		targets = []string{}
	}
	tj, err := json.Marshal(targets)
	if err != nil {
		return fmt.Errorf("stem: postgres control: publish: encode targets: %w", err)
	}
	payload, inline := inlinePayload(tj, msg)
	if inline {
		if _, err := c.s.pool.Exec(ctx, c.s.q.notify, c.cmdChannel, payload); err != nil {
			return c.errorf(err, "publish to %s of namespace %q", describeTargets(targets), c.ns)
		}
		return nil
	}
	if _, err := c.s.pool.Exec(ctx, c.s.q.storeControl, c.ns, targets, msg, c.cmdChannel); err != nil {
		return c.errorf(err, "publish %d bytes to %s of namespace %q", len(msg), describeTargets(targets), c.ns)
	}
	c.maybePrune()
	return nil
}

// inlinePayload returns the NOTIFY payload of a message to the targets
// encoded as tj, and whether it fits one (it is short enough, valid UTF-8
// and free of NUL); a message that does not goes through
// stem_control_messages.
func inlinePayload(tj, msg []byte) (string, bool) {
	payload := "m" + strconv.Itoa(len(tj)) + ":" + string(tj) + string(msg)
	return payload, len(payload) <= maxInline && utf8.Valid(msg) && !strings.ContainsRune(payload, 0)
}

func describeTargets(targets []string) string {
	if len(targets) == 0 {
		return "every worker"
	}
	return fmt.Sprintf("workers %q", targets)
}

// Subscribe starts receiving the messages for workerID and the namespace's
// broadcasts. It returns once the channel is LISTENed, so a message
// published after Subscribe returns is delivered. Messages published while
// the listener reconnects are missed (best effort, as the contract says).
func (c *Control) Subscribe(ctx context.Context, workerID string) (stemdriver.ControlSubscription, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	if workerID == "" {
		return nil, errors.New("stem: postgres control: subscribe: no worker id")
	}
	s := &subscription{
		c:      c,
		worker: workerID,
		ch:     make(chan []byte, 64),
		done:   make(chan struct{}),
		wake:   make(chan struct{}, 1),
	}
	remove, err := c.s.lis.add(ctx, c.cmdChannel, &handler{notify: s.enqueue})
	if err != nil {
		if remove != nil {
			remove()
		}
		return nil, c.errorf(err, "subscribe worker %q of namespace %q", workerID, c.ns)
	}
	s.remove = remove
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		remove()
		return nil, c.checkOpen()
	}
	c.subs[s] = struct{}{}
	c.mu.Unlock()
	s.wg.Add(1)
	go s.forward()
	return s, nil
}

// subscription is one worker's stream of control messages.
type subscription struct {
	c      *Control
	worker string
	ch     chan []byte
	done   chan struct{}
	wake   chan struct{}
	remove func()
	once   sync.Once
	wg     sync.WaitGroup

	mu      sync.Mutex
	pending []string // notification payloads, in order
	dropped int
}

// enqueue queues a notification; it runs on the listener's goroutine and
// never blocks.
func (s *subscription) enqueue(payload string) {
	s.mu.Lock()
	if len(s.pending) >= subQueueLimit {
		s.dropped++
		s.mu.Unlock()
		return
	}
	s.pending = append(s.pending, payload)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// forward decodes queued notifications in order, loading stored messages,
// and delivers those addressed to the worker until Close.
func (s *subscription) forward() {
	defer s.wg.Done()
	defer close(s.ch)
	for {
		s.mu.Lock()
		batch := s.pending
		s.pending = nil
		dropped := s.dropped
		s.dropped = 0
		s.mu.Unlock()
		if dropped > 0 {
			s.c.log.Warn("stem: postgres control: subscriber too slow; dropped control messages", "worker_id", s.worker, "dropped", dropped)
		}
		for _, p := range batch {
			msg, ok := s.decode(p)
			if !ok {
				continue
			}
			select {
			case s.ch <- msg:
			case <-s.done:
				return
			}
		}
		select {
		case <-s.wake:
		case <-s.done:
			return
		}
	}
}

// notification is a command notification, parsed: an inline message and
// its targets, or the id of a message stored in stem_control_messages.
type notification struct {
	targets []string
	msg     []byte
	stored  int64 // > 0: the message is the stored row of this id
}

// parseNotification parses the payload of a command notification, as
// Publish writes it: "m" LEN ":" TARGETS MSG, where TARGETS is a JSON list
// of LEN bytes, or "r" ID for a stored message. Anything else (another
// program may NOTIFY on the channel) is an error naming what is wrong.
func parseNotification(p string) (notification, error) {
	var n notification
	switch {
	case strings.HasPrefix(p, "m"):
		size, rest, ok := strings.Cut(p[1:], ":")
		if !ok {
			return n, errors.New("inline message without ':' after its targets' length")
		}
		l, err := strconv.Atoi(size)
		if err != nil || l < 0 || l > len(rest) {
			return n, fmt.Errorf("inline message with targets' length %.20q: want 0 to %d", size, len(rest))
		}
		var targets []string
		if err := json.Unmarshal([]byte(rest[:l]), &targets); err != nil {
			return n, fmt.Errorf("inline message whose targets are not a JSON list of strings: %w", err)
		}
		n.targets, n.msg = targets, []byte(rest[l:])
	case strings.HasPrefix(p, "r"):
		id, err := strconv.ParseInt(p[1:], 10, 64)
		if err != nil || id <= 0 {
			return n, fmt.Errorf("stored message with id %.30q: want a positive integer", p[1:])
		}
		n.stored = id
	default:
		return n, fmt.Errorf("unknown notification kind %.1q (want m or r)", p)
	}
	return n, nil
}

// decode turns a notification into the message, when it is for s. A
// notification that does not parse is logged, naming what is wrong, and
// dropped.
func (s *subscription) decode(p string) ([]byte, bool) {
	n, err := parseNotification(p)
	if err != nil {
		s.c.log.Warn("stem: postgres control: ignoring a malformed notification", "worker_id", s.worker,
			"bytes", len(p), "error", err.Error())
		return nil, false
	}
	targets, msg := n.targets, n.msg
	if id := n.stored; id > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		go func() {
			select {
			case <-s.done:
				cancel()
			case <-ctx.Done():
			}
		}()
		err = s.c.s.pool.QueryRow(ctx, s.c.s.q.loadControl, id).Scan(&targets, &msg)
		cancel()
		if err != nil {
			if !s.c.closed.Load() {
				s.c.log.Warn("stem: postgres control: cannot load a control message", "worker_id", s.worker, "id", id, "error", scrub(err, s.c.s.password).Error())
			}
			return nil, false
		}
	}
	if len(targets) > 0 && !slices.Contains(targets, s.worker) {
		return nil, false
	}
	return msg, true
}

// C delivers the worker's messages; it is closed when the subscription is.
func (s *subscription) C() <-chan []byte { return s.ch }

// Close ends the subscription. It is safe to call more than once.
func (s *subscription) Close() error {
	s.once.Do(func() {
		s.remove()
		close(s.done)
		s.wg.Wait()
		s.c.mu.Lock()
		delete(s.c.subs, s)
		s.c.mu.Unlock()
	})
	return nil
}

// replyPayload is the notification of a reply to requestID: the id, or its
// hash when long.
func replyPayload(requestID string) string {
	if len(requestID) <= 200 {
		return requestID
	}
	h := sha256.Sum256([]byte(requestID))
	return "#" + hex.EncodeToString(h[:])
}

// Reply stores msg under requestID (kept at least two minutes), then
// notifies waiting Replies (see notifier).
func (c *Control) Reply(ctx context.Context, requestID string, msg []byte) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	if requestID == "" {
		return errors.New("stem: postgres control: reply: no request id")
	}
	if msg == nil {
		msg = []byte{} // an empty reply, not NULL
	}
	// A reply is soft state, as presence is: its commit does not wait for
	// the disk (a crash of the database may lose it, and the caller then
	// counts the worker as not answering), so that a revoke's or ping's
	// caller hears back one disk flush sooner.
	batch := &pgx.Batch{}
	batch.Queue(relaxedCommitSQL)
	batch.Queue(c.s.q.reply, c.ns, requestID, msg)
	if err := c.s.pool.SendBatch(ctx, batch).Close(); err != nil {
		return c.errorf(err, "reply to request %q", requestID)
	}
	c.s.notes.send(c.replyChannel, replyPayload(requestID))
	c.maybePrune()
	return nil
}

// Replies calls fn with every reply stored for requestID, oldest first,
// those stored before the call included, woken by NOTIFY (and polling every
// PollInterval), until fn returns false (Replies then returns nil) or ctx
// ends (Replies then returns ctx's error).
func (c *Control) Replies(ctx context.Context, requestID string, fn func(msg []byte) bool) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	wake := make(chan struct{}, 1)
	poke := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	want := replyPayload(requestID)
	// Wait a little for the LISTEN, not for ever: while the listener
	// reconnects, Replies polls.
	actx, cancel := context.WithTimeout(ctx, PollInterval)
	remove, err := c.s.lis.add(actx, c.replyChannel, &handler{
		notify: func(p string) {
			if p == want {
				poke()
			}
		},
		reset: poke,
	})
	cancel()
	if remove != nil {
		defer remove()
	}
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	if err != nil && remove == nil {
		return c.errorf(err, "read replies to request %q", requestID)
	}
	// Reply ids are assigned at insert, and concurrent replies commit in
	// any order: a reply with a lower id may become visible after one
	// with a higher id, so Replies remembers every id it delivered rather
	// than the highest.
	seen := []int64{} // not nil: NULL would match no row
	for {
		if err := c.checkOpen(); err != nil {
			return err
		}
		rows, err := c.s.pool.Query(ctx, c.s.q.replies, c.ns, requestID, seen)
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return cerr
			}
			return c.errorf(err, "read replies to request %q", requestID)
		}
		var bodies [][]byte
		for rows.Next() {
			var id int64
			var body []byte
			if err := rows.Scan(&id, &body); err != nil {
				rows.Close()
				return c.errorf(err, "read replies to request %q", requestID)
			}
			seen = append(seen, id)
			bodies = append(bodies, body)
		}
		if err := rows.Err(); err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return cerr
			}
			return c.errorf(err, "read replies to request %q", requestID)
		}
		for _, b := range bodies {
			if !fn(b) {
				return nil
			}
		}
		if len(bodies) > 0 {
			continue // there may be more than one page
		}
		timer := time.NewTimer(PollInterval)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// maybePrune deletes old replies and stored messages in the background at
// most once a minute per Control.
func (c *Control) maybePrune() {
	c.pruneMu.Lock()
	if time.Since(c.lastPrune) < pruneEvery {
		c.pruneMu.Unlock()
		return
	}
	c.lastPrune = time.Now()
	c.pruneMu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, q := range []string{c.s.q.pruneReplies, c.s.q.pruneControl, c.s.q.pruneWorkers} {
			if c.closed.Load() {
				return
			}
			if _, err := c.s.pool.Exec(ctx, q); err != nil && !c.closed.Load() {
				c.log.Warn("stem: postgres control: prune old replies and messages", "error", scrub(err, c.s.password).Error())
			}
		}
	}()
}

// Announce records info's worker as live until ttl passes (on the server's
// clock) without another Announce, in one statement that refuses, changing
// nothing, while another instance's announcement of the id is live: the
// error is then a *stemdriver.WorkerIDTakenError. A zero LastSeen is set to
// now and an empty Namespace to the transport's.
func (c *Control) Announce(ctx context.Context, info stemtype.WorkerInfo, ttl time.Duration) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	info, raw, err := stemdriver.PrepareAnnounce(info, ttl, c.ns)
	if err != nil {
		return fmt.Errorf("stem: postgres control: announce: %w", err)
	}
	var stored int64
	var holderRaw []byte
	// Presence is soft state, refreshed every few seconds: its commit does
	// not wait for the disk (a database crash may undo the last
	// announcement, which the next one restores), so that a slow disk
	// never lets a live worker's short ttl lapse.
	batch := &pgx.Batch{}
	batch.Queue(relaxedCommitSQL)
	batch.Queue(c.s.q.announce, c.ns, info.ID, info.Instance, raw, max(ttl.Microseconds(), 1)).QueryRow(func(row pgx.Row) error {
		return row.Scan(&stored, &holderRaw)
	})
	if err := c.s.pool.SendBatch(ctx, batch).Close(); err != nil {
		return c.errorf(err, "announce worker %q", info.ID)
	}
	if stored == 1 {
		return nil
	}
	if holderRaw == nil {
		// The holder committed after the statement's snapshot (the upsert
		// saw it, the read did not): read it again.
		err := c.s.pool.QueryRow(ctx, c.s.q.holder, c.ns, info.ID, info.Instance).Scan(&holderRaw)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return c.errorf(err, "announce worker %q: read the live announcement", info.ID)
		}
	}
	var holder stemtype.WorkerInfo
	if err := json.Unmarshal(holderRaw, &holder); err != nil || holder.ID == "" {
		holder = stemtype.WorkerInfo{ID: info.ID}
	}
	return &stemdriver.WorkerIDTakenError{Live: holder}
}

// relaxedCommitSQL turns off the wait for the disk at the commit of the
// transaction it runs in (an implicit one: a pipeline's), and of that
// transaction only.
const relaxedCommitSQL = `SELECT set_config('synchronous_commit', 'off', true)`

// Withdraw forgets workerID at once when its announcement is instance's,
// and does nothing otherwise.
func (c *Control) Withdraw(ctx context.Context, workerID, instance string) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	if _, err := c.s.pool.Exec(ctx, c.s.q.withdraw, c.ns, workerID, instance); err != nil {
		return c.errorf(err, "withdraw worker %q", workerID)
	}
	return nil
}

// Workers lists the live workers of the namespace, by id.
func (c *Control) Workers(ctx context.Context) ([]stemtype.WorkerInfo, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	rows, err := c.s.pool.Query(ctx, c.s.q.workers, c.ns)
	if err != nil {
		return nil, c.errorf(err, "list workers of namespace %q", c.ns)
	}
	defer rows.Close()
	out := []stemtype.WorkerInfo{}
	for rows.Next() {
		var raw []byte
		if err := rows.Scan(&raw); err != nil {
			return nil, c.errorf(err, "list workers of namespace %q", c.ns)
		}
		var w stemtype.WorkerInfo
		if err := json.Unmarshal(raw, &w); err != nil {
			c.log.Warn("stem: postgres control: skipping an undecodable announcement", "namespace", c.ns, "error", err.Error())
			continue
		}
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		return nil, c.errorf(err, "list workers of namespace %q", c.ns)
	}
	return out, nil
}

// Close ends the transport's subscriptions and releases its share
// of the connection pool.
func (c *Control) Close() error {
	c.mu.Lock()
	c.closed.Store(true)
	subs := make([]*subscription, 0, len(c.subs))
	for s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	for _, s := range subs {
		_ = s.Close()
	}
	c.closeRole()
	return nil
}
