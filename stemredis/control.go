package stemredis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

const (
	// replyTTL is how long a request's replies are kept after the last one.
	replyTTL = 2 * time.Minute
	// replyField is the stream entry field holding one reply.
	replyField = "m"
	// subBuffer is how many control messages a subscription holds for a
	// worker that is busy reading the previous ones.
	subBuffer = 64
)

// Control is a stemdriver.ControlTransport on Redis: commands travel on
// pub/sub channels (one broadcast channel per namespace and database, and
// one per worker), replies are kept in a short-lived stream per request id,
// and presence is one expiring key per worker beside a sorted set of
// liveness deadlines that indexes them. It is safe for concurrent use.
type Control struct {
	conn
	ns  string
	db  int // the database: pub/sub ignores it, so channels name it
	blk *blocker

	// maxBlock caps one XREAD BLOCK of Replies (tests raise it).
	maxBlock time.Duration

	mu   sync.Mutex
	subs map[*subscription]struct{}
}

var _ stemdriver.ControlTransport = (*Control)(nil)

// OpenControl connects to the Redis server at url and returns a control
// transport for opts.Namespace. It pings the server and fails when it is
// unreachable.
func OpenControl(ctx context.Context, url string, opts stemdriver.Options) (*Control, error) {
	rdb, cfg, err := open(ctx, url, opts)
	if err != nil {
		return nil, err
	}
	return &Control{
		conn:     conn{rdb: rdb, addr: cfg.addr, role: "control", log: cfg.logger},
		ns:       cfg.namespace,
		db:       cfg.redis.DB,
		blk:      newBlocker(rdb, cfg.blockOpts),
		maxBlock: maxBlock,
		subs:     make(map[*subscription]struct{}),
	}, nil
}

// Publish sends msg to every subscriber of the namespace on this database
// (no targets, or stemtype.BroadcastTarget among them) or to the named
// workers, one PUBLISH per channel in one pipeline. Pub/sub is
// fire-and-forget: a subscriber that is not connected at that moment never
// sees the message.
func (c *Control) Publish(ctx context.Context, targets []string, msg []byte) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	broadcast := len(targets) == 0
	for _, t := range targets {
		if t == stemtype.BroadcastTarget {
			broadcast = true
		}
	}
	if broadcast {
		if err := c.rdb.Publish(ctx, broadcastChannel(c.ns, c.db), msg).Err(); err != nil {
			return c.errorf(err, "publish to namespace %q", c.ns)
		}
		return nil
	}
	seen := make(map[string]bool, len(targets))
	pipe := c.rdb.Pipeline()
	for _, t := range targets {
		if seen[t] {
			continue
		}
		seen[t] = true
		pipe.Publish(ctx, workerChannel(c.ns, c.db, t), msg)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return c.errorf(err, "publish to workers %q of namespace %q", targets, c.ns)
	}
	return nil
}

// Subscribe starts receiving the messages for workerID and the namespace's
// broadcasts, those published through a Control on the same database only. It returns once the server confirmed the subscription, so a
// message published after Subscribe returns is delivered. A subscription
// survives reconnects (go-redis subscribes again) but misses what was
// published while it was disconnected; a subscriber that does not read C
// for a minute while messages pile up loses the excess.
func (c *Control) Subscribe(ctx context.Context, workerID string) (stemdriver.ControlSubscription, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	if workerID == "" {
		return nil, errors.New("stem: redis control: subscribe: no worker id")
	}
	chans := []string{broadcastChannel(c.ns, c.db), workerChannel(c.ns, c.db, workerID)}
	ps := c.rdb.Subscribe(ctx, chans...)
	var early []*redis.Message
	for confirmed := 0; confirmed < len(chans); {
		m, err := ps.Receive(ctx)
		if err != nil {
			_ = ps.Close()
			return nil, c.errorf(err, "subscribe worker %q of namespace %q", workerID, c.ns)
		}
		switch m := m.(type) {
		case *redis.Subscription:
			confirmed++
		case *redis.Message:
			early = append(early, m)
		}
	}
	s := &subscription{
		c:    c,
		ps:   ps,
		ch:   make(chan []byte, subBuffer),
		done: make(chan struct{}),
	}
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		_ = ps.Close()
		return nil, c.checkOpen()
	}
	c.subs[s] = struct{}{}
	c.mu.Unlock()
	in := ps.Channel(redis.WithChannelSize(subBuffer))
	s.wg.Add(1)
	go s.forward(early, in)
	return s, nil
}

// subscription is one worker's stream of control messages.
type subscription struct {
	c    *Control
	ps   *redis.PubSub
	ch   chan []byte
	done chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

// forward copies messages from go-redis's channel to C until the
// subscription is closed.
func (s *subscription) forward(early []*redis.Message, in <-chan *redis.Message) {
	defer s.wg.Done()
	defer close(s.ch)
	send := func(m *redis.Message) bool {
		select {
		case s.ch <- []byte(m.Payload):
			return true
		case <-s.done:
			return false
		}
	}
	for _, m := range early {
		if !send(m) {
			return
		}
	}
	for {
		select {
		case m, ok := <-in:
			if !ok || !send(m) {
				return
			}
		case <-s.done:
			return
		}
	}
}

// C delivers the worker's messages; it is closed when the subscription is.
func (s *subscription) C() <-chan []byte { return s.ch }

// Close ends the subscription. It is safe to call more than once.
func (s *subscription) Close() error {
	var err error
	s.once.Do(func() {
		close(s.done)
		err = s.ps.Close()
		s.wg.Wait()
		s.c.mu.Lock()
		delete(s.c.subs, s)
		s.c.mu.Unlock()
	})
	if err != nil {
		return fmt.Errorf("stem: redis control: close subscription: %w", err)
	}
	return nil
}

// Reply appends msg to the reply stream of requestID and restarts the
// stream's two-minute expiry, in one MULTI/EXEC round trip.
func (c *Control) Reply(ctx context.Context, requestID string, msg []byte) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	if requestID == "" {
		return errors.New("stem: redis control: reply: no request id")
	}
	key := replyKey(c.ns, requestID)
	_, err := c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []any{replyField, msg}})
		p.PExpire(ctx, key, replyTTL)
		return nil
	})
	if err != nil {
		return c.errorf(err, "reply to request %q", requestID)
	}
	return nil
}

// Replies calls fn with every reply stored for requestID, oldest first,
// those stored before the call included, and waits for more with XREAD
// BLOCK until fn returns false (Replies then returns nil) or ctx ends
// (Replies then returns ctx's error).
func (c *Control) Replies(ctx context.Context, requestID string, fn func(msg []byte) bool) error {
	key := replyKey(c.ns, requestID)
	last := "0-0"
	for {
		if err := c.checkOpen(); err != nil {
			return err
		}
		var streams []redis.XStream
		err := c.blk.do(ctx, func(ctx context.Context, conn *redis.Conn) error {
			var err error
			streams, err = conn.XRead(ctx, &redis.XReadArgs{Streams: []string{key, last}, Count: 100, Block: c.maxBlock}).Result()
			return err
		})
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return c.errorf(err, "read replies to request %q", requestID)
		}
		for _, st := range streams {
			for _, m := range st.Messages {
				last = m.ID
				v, _ := m.Values[replyField].(string)
				if !fn([]byte(v)) {
					return nil
				}
			}
		}
	}
}

// Announce records info's worker as live until ttl passes without another
// Announce (measured on the server's clock), in one script that refuses,
// changing nothing, while another instance's announcement of the same id
// is live: the error is then a *stemdriver.WorkerIDTakenError. A zero
// LastSeen is set to now and an empty Namespace to the transport's. The
// worker's key expires with its liveness, rounded up to a millisecond.
func (c *Control) Announce(ctx context.Context, info stemtype.WorkerInfo, ttl time.Duration) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	info, raw, err := stemdriver.PrepareAnnounce(info, ttl, c.ns)
	if err != nil {
		return fmt.Errorf("stem: redis control: announce: %w", err)
	}
	k := newPresenceKeys(c.ns)
	ms := (ttl + time.Millisecond - 1).Milliseconds()
	live, err := announceScript.run(ctx, c.rdb, []string{k.live, k.worker(info.ID)},
		info.ID, ttl.Microseconds(), ms, raw, info.Instance).Text()
	switch {
	case errors.Is(err, redis.Nil):
		return nil
	case err != nil:
		return c.errorf(err, "announce worker %q", info.ID)
	}
	var holder stemtype.WorkerInfo
	if err := json.Unmarshal([]byte(live), &holder); err != nil || holder.ID == "" {
		holder = stemtype.WorkerInfo{ID: info.ID}
	}
	return &stemdriver.WorkerIDTakenError{Live: holder}
}

// Withdraw forgets workerID at once when its announcement is instance's,
// and does nothing otherwise.
func (c *Control) Withdraw(ctx context.Context, workerID, instance string) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	k := newPresenceKeys(c.ns)
	if err := withdrawScript.run(ctx, c.rdb, []string{k.live, k.worker(workerID)}, workerID, instance).Err(); err != nil {
		return c.errorf(err, "withdraw worker %q", workerID)
	}
	return nil
}

// workersBatch is how many worker keys one MGET of Workers reads.
const workersBatch = 500

// Workers lists the live workers of the namespace, forgetting the index
// entries of those whose liveness ended. It takes two round trips (the
// index, then the workers' keys), so a worker that withdraws in between is
// left out.
func (c *Control) Workers(ctx context.Context) ([]stemtype.WorkerInfo, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	k := newPresenceKeys(c.ns)
	ids, err := workersScript.run(ctx, c.rdb, []string{k.live}).StringSlice()
	if err != nil {
		return nil, c.errorf(err, "list workers of namespace %q", c.ns)
	}
	out := make([]stemtype.WorkerInfo, 0, len(ids))
	for len(ids) > 0 {
		n := min(len(ids), workersBatch)
		keys := make([]string, n)
		for i, id := range ids[:n] {
			keys[i] = k.worker(id)
		}
		ids = ids[n:]
		vals, err := c.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, c.errorf(err, "read workers of namespace %q", c.ns)
		}
		for _, v := range vals {
			raw, ok := v.(string)
			if !ok {
				continue // withdrawn or expired since the index was read
			}
			var w stemtype.WorkerInfo
			if err := json.Unmarshal([]byte(raw), &w); err != nil {
				c.log.WarnContext(ctx, "stem: redis control: skipping undecodable worker info",
					slog.String("namespace", c.ns), slog.String("error", err.Error()))
				continue
			}
			out = append(out, w)
		}
	}
	return out, nil
}

// Close ends every subscription (closing their channels), ends waiting
// Replies calls and closes the connections. Operations after Close return
// an error matching stemdriver.ErrClosed. Close is safe to call more than
// once.
func (c *Control) Close() error {
	c.mu.Lock()
	if c.closed.Swap(true) {
		c.mu.Unlock()
		return nil
	}
	subs := make([]*subscription, 0, len(c.subs))
	for s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	for _, s := range subs {
		_ = s.Close()
	}
	c.blk.close()
	if err := c.rdb.Close(); err != nil {
		return fmt.Errorf("stem: redis control at %s: close: %w", c.addr, err)
	}
	return nil
}
