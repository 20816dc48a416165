package stemmem

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// subscriptionBuffer is how many undelivered messages a subscription holds
// before new ones are dropped.
const subscriptionBuffer = 256

// replyTTL is how long replies are kept after the last reply to the same
// request id.
const replyTTL = time.Minute

// controlSpace is the control state of one namespace.
type controlSpace struct {
	namespace string

	mu        sync.Mutex
	subs      map[*subscription]struct{}
	replies   map[string]*replyLog
	lastSweep time.Time
	workers   map[string]presence
}

func newControlSpace(namespace string) *controlSpace {
	return &controlSpace{
		namespace: namespace,
		subs:      make(map[*subscription]struct{}),
		replies:   make(map[string]*replyLog),
		workers:   make(map[string]presence),
	}
}

// replyLog is the replies stored under one request id.
type replyLog struct {
	msgs    [][]byte // appended only; elements are never modified
	updated time.Time
	waiters int           // running Replies calls; a log with waiters is never swept
	wake    chan struct{} // closed and replaced on every append
}

// presence is one announced worker.
type presence struct {
	info    stemtype.WorkerInfo
	expires time.Time
}

// replyLog returns the log of requestID, creating it, after dropping logs
// that expired. s.mu must be held.
func (s *controlSpace) replyLog(requestID string, now time.Time) *replyLog {
	if now.Sub(s.lastSweep) >= replyTTL/4 {
		s.lastSweep = now
		for id, l := range s.replies {
			if l.waiters == 0 && now.Sub(l.updated) >= replyTTL {
				delete(s.replies, id)
			}
		}
	}
	l := s.replies[requestID]
	if l == nil || (l.waiters == 0 && now.Sub(l.updated) >= replyTTL) {
		l = &replyLog{updated: now, wake: make(chan struct{})}
		s.replies[requestID] = l
	}
	return l
}

// control is one control transport value on a controlSpace.
type control struct {
	space     *controlSpace
	logger    *slog.Logger
	closed    chan struct{}
	closeOnce sync.Once
	subs      map[*subscription]struct{} // guarded by space.mu
}

var _ stemdriver.ControlTransport = (*control)(nil)

func (c *control) check(op string) error {
	if isClosed(c.closed) {
		return fmt.Errorf("stem: memory control %s: %w", op, stemdriver.ErrClosed)
	}
	return nil
}

// Publish hands a copy of msg to every subscription of targets (all of them
// for a broadcast) without blocking: a subscription whose buffer is full
// misses the message, and a warning is logged.
func (c *control) Publish(ctx context.Context, targets []string, msg []byte) error {
	if err := c.check("publish"); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	broadcast := len(targets) == 0 || slices.Contains(targets, stemtype.BroadcastTarget)
	var dropped []*subscription
	s := c.space
	s.mu.Lock()
	for sub := range s.subs {
		if !broadcast && !slices.Contains(targets, sub.workerID) {
			continue
		}
		select {
		case sub.ch <- append([]byte(nil), msg...):
		default:
			dropped = append(dropped, sub)
		}
	}
	s.mu.Unlock()
	for _, sub := range dropped {
		sub.owner.logger.Warn("stem: memory control: subscriber buffer full, message dropped",
			"namespace", s.namespace, "worker_id", sub.workerID, "buffer", subscriptionBuffer)
	}
	return nil
}

// Subscribe opens a subscription for workerID. It is closed when it or c is
// closed.
func (c *control) Subscribe(ctx context.Context, workerID string) (stemdriver.ControlSubscription, error) {
	if workerID == "" {
		return nil, errors.New("stem: memory control subscribe: empty worker id")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sub := &subscription{owner: c, workerID: workerID, ch: make(chan []byte, subscriptionBuffer)}
	s := c.space
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := c.check("subscribe"); err != nil {
		return nil, err
	}
	s.subs[sub] = struct{}{}
	c.subs[sub] = struct{}{}
	return sub, nil
}

// Reply stores a copy of msg under requestID and wakes the Replies calls
// waiting on it.
func (c *control) Reply(ctx context.Context, requestID string, msg []byte) error {
	if err := c.check("reply"); err != nil {
		return err
	}
	if requestID == "" {
		return errors.New("stem: memory control reply: empty request id")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	now := time.Now()
	s := c.space
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.replyLog(requestID, now)
	l.msgs = append(l.msgs, append([]byte(nil), msg...))
	l.updated = now
	close(l.wake)
	l.wake = make(chan struct{})
	return nil
}

// Replies calls fn with every reply stored under requestID, in order, those
// stored before the call included, until fn returns false (then it returns
// nil) or ctx ends (then it returns ctx.Err()).
func (c *control) Replies(ctx context.Context, requestID string, fn func(msg []byte) bool) error {
	if err := c.check("replies"); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s := c.space
	s.mu.Lock()
	l := s.replyLog(requestID, time.Now())
	l.waiters++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		l.waiters--
		s.mu.Unlock()
	}()
	next := 0
	for {
		s.mu.Lock()
		pending := l.msgs[next:len(l.msgs):len(l.msgs)]
		wake := l.wake
		s.mu.Unlock()
		for _, msg := range pending {
			next++
			if !fn(append([]byte(nil), msg...)) {
				return nil
			}
		}
		if len(pending) > 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.closed:
			return fmt.Errorf("stem: memory control replies: %w", stemdriver.ErrClosed)
		case <-wake:
		}
	}
}

// Announce records info as live until ttl passes without another Announce.
// While another instance's announcement of the same id is live, it changes
// nothing and returns a *stemdriver.WorkerIDTakenError naming that one.
func (c *control) Announce(ctx context.Context, info stemtype.WorkerInfo, ttl time.Duration) error {
	if err := c.check("announce"); err != nil {
		return err
	}
	switch {
	case info.ID == "":
		return errors.New("stem: memory control announce: worker info has no id")
	case ttl <= 0:
		return fmt.Errorf("stem: memory control announce %s: ttl is %v, want a positive duration", info.ID, ttl)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	info.Queues = slices.Clone(info.Queues)
	s := c.space
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.workers[info.ID]; ok && now.Before(p.expires) && p.info.Instance != info.Instance {
		live := p.info
		live.Queues = slices.Clone(live.Queues)
		return &stemdriver.WorkerIDTakenError{Live: live}
	}
	s.workers[info.ID] = presence{info: info, expires: now.Add(ttl)}
	return nil
}

// Withdraw forgets the worker workerID when its announcement is instance's;
// forgetting an unknown worker, or another instance's, does nothing.
func (c *control) Withdraw(ctx context.Context, workerID, instance string) error {
	if err := c.check("withdraw"); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s := c.space
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.workers[workerID]; ok && p.info.Instance == instance {
		delete(s.workers, workerID)
	}
	return nil
}

// Workers lists the live workers of the namespace, sorted by id.
func (c *control) Workers(ctx context.Context) ([]stemtype.WorkerInfo, error) {
	if err := c.check("workers"); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := time.Now()
	s := c.space
	s.mu.Lock()
	out := make([]stemtype.WorkerInfo, 0, len(s.workers))
	for id, p := range s.workers {
		if !now.Before(p.expires) {
			delete(s.workers, id)
			continue
		}
		info := p.info
		info.Queues = slices.Clone(info.Queues)
		out = append(out, info)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b stemtype.WorkerInfo) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

// Close closes c and every subscription opened through it; a Replies call
// blocked on c returns stemdriver.ErrClosed. Other values of the same Hub are
// unaffected. Close is idempotent.
func (c *control) Close() error {
	c.closeOnce.Do(func() {
		s := c.space
		s.mu.Lock()
		defer s.mu.Unlock()
		close(c.closed)
		for sub := range c.subs {
			sub.closeLocked()
		}
	})
	return nil
}

// subscription is one worker's control subscription.
type subscription struct {
	owner    *control
	workerID string
	ch       chan []byte
	closed   bool // guarded by owner.space.mu
}

var _ stemdriver.ControlSubscription = (*subscription)(nil)

// C delivers the messages addressed to the worker; it is closed by Close.
func (s *subscription) C() <-chan []byte { return s.ch }

// Close ends the subscription and closes C. It is safe to call more than
// once.
func (s *subscription) Close() error {
	space := s.owner.space
	space.mu.Lock()
	defer space.mu.Unlock()
	s.closeLocked()
	return nil
}

// closeLocked closes s. The space's mu must be held.
func (s *subscription) closeLocked() {
	if s.closed {
		return
	}
	s.closed = true
	delete(s.owner.space.subs, s)
	delete(s.owner.subs, s)
	close(s.ch)
}
