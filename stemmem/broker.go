package stemmem

import (
	"cmp"
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// msgState says which heap of its queue a message is in.
type msgState int

const (
	stateReady msgState = iota
	stateDelayed
	stateLeased
)

// message is one stored envelope.
type message struct {
	seq       uint64 // queue order within the namespace: publish, or due, order
	raw       []byte // the envelope's JSON encoding; never mutated
	queue     string
	priority  int
	notBefore time.Time

	state      msgState
	index      int       // position in the heap of its state
	receipt    string    // the current holder's receipt; "" when unheld
	leaseUntil time.Time // meaningful while state is stateLeased
	// claimed is set by the message's first claim: every later claim (after
	// an expired lease or a Release) is a redelivery. A Retry stores a new
	// message, claimed false.
	claimed bool
}

// queue holds one queue's messages in three heaps.
type queue struct {
	ready   msgHeap // claimable now, by priority then queue order (seq)
	delayed msgHeap // NotBefore in the future
	leased  msgHeap // held by a consumer until leaseUntil
}

func newQueue() *queue {
	return &queue{
		ready:   msgHeap{less: readyFirst},
		delayed: msgHeap{less: dueFirst},
		leased:  msgHeap{less: expiresFirst},
	}
}

// brokerSpace is the broker data of one namespace, shared by every broker
// value opened on it.
type brokerSpace struct {
	mu     sync.Mutex
	queues map[string]*queue
	// held maps a receipt to its message. A message whose lease expired
	// stays here under its receipt until another claim takes it, so the
	// holder can still ack or extend it until then.
	held   map[string]*message
	dead   map[string][]DeadLetter
	seq    uint64
	claims uint64
	// wake is closed and replaced whenever a message may have become
	// claimable earlier than waiters expect (publish, retry, release).
	wake chan struct{}
}

func newBrokerSpace() *brokerSpace {
	return &brokerSpace{
		queues: make(map[string]*queue),
		held:   make(map[string]*message),
		dead:   make(map[string][]DeadLetter),
		wake:   make(chan struct{}),
	}
}

// signal wakes every waiting Claim. s.mu must be held.
func (s *brokerSpace) signal() {
	close(s.wake)
	s.wake = make(chan struct{})
}

// queue returns the named queue, creating it. s.mu must be held.
func (s *brokerSpace) queue(name string) *queue {
	q := s.queues[name]
	if q == nil {
		q = newQueue()
		s.queues[name] = q
	}
	return q
}

// insert stores a new message. s.mu must be held.
func (s *brokerSpace) insert(raw []byte, env *stemtype.Envelope, now time.Time) {
	s.seq++
	m := &message{seq: s.seq, raw: raw, queue: env.Queue, priority: env.Priority, notBefore: env.NotBefore}
	q := s.queue(env.Queue)
	if m.notBefore.After(now) {
		m.state = stateDelayed
		heap.Push(&q.delayed, m)
		return
	}
	m.state = stateReady
	heap.Push(&q.ready, m)
}

// tick moves the messages of q that are due, and those whose lease expired,
// to the ready heap. A due message joins the end of its queue (it gets a new
// sequence number), so delayed messages are claimed in order of NotBefore,
// however they were published, as on Redis. s.mu must be held.
func (s *brokerSpace) tick(q *queue, now time.Time) {
	for m := q.delayed.peek(); m != nil && !m.notBefore.After(now); m = q.delayed.peek() {
		heap.Pop(&q.delayed)
		s.seq++
		m.seq = s.seq
		m.state = stateReady
		heap.Push(&q.ready, m)
	}
	for m := q.leased.peek(); m != nil && !m.leaseUntil.After(now); m = q.leased.peek() {
		heap.Pop(&q.leased)
		m.state = stateReady // keeps its receipt until re-claimed
		heap.Push(&q.ready, m)
	}
}

// lookup returns the message d holds, or nil when d's lease was lost.
// s.mu must be held.
func (s *brokerSpace) lookup(d stemdriver.Delivery) *message {
	m := s.held[d.Receipt]
	if m == nil || m.queue != d.Queue {
		return nil
	}
	return m
}

// remove takes m out of its queue for good. s.mu must be held.
func (s *brokerSpace) remove(m *message) {
	q := s.queues[m.queue]
	switch m.state {
	case stateReady:
		heap.Remove(&q.ready, m.index)
	case stateDelayed:
		heap.Remove(&q.delayed, m.index)
	case stateLeased:
		heap.Remove(&q.leased, m.index)
	}
	if m.receipt != "" {
		delete(s.held, m.receipt)
		m.receipt = ""
	}
}

// nextDeadline returns the earliest time after which one of queues may have
// a claimable message that it has not now, or the zero time. s.mu must be
// held.
func (s *brokerSpace) nextDeadline(queues []string) time.Time {
	var next time.Time
	earlier := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	for _, name := range queues {
		q := s.queues[name]
		if q == nil {
			continue
		}
		if m := q.delayed.peek(); m != nil {
			earlier(m.notBefore)
		}
		if m := q.leased.peek(); m != nil {
			earlier(m.leaseUntil)
		}
	}
	return next
}

// broker is one broker value (one "connection") on a brokerSpace.
type broker struct {
	space     *brokerSpace
	logger    *slog.Logger
	closed    chan struct{}
	closeOnce sync.Once
}

var _ stemdriver.Broker = (*broker)(nil)

func (b *broker) check(op string) error {
	if isClosed(b.closed) {
		return fmt.Errorf("stem: memory broker %s: %w", op, stemdriver.ErrClosed)
	}
	return nil
}

// Publish stores envs, each as a message of its own: an envelope given
// twice, in one call or two, is two messages. It validates and encodes all
// of them before storing any, so it stores all or none.
func (b *broker) Publish(ctx context.Context, envs ...*stemtype.Envelope) error {
	if err := b.check("publish"); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	raws, err := stemdriver.EncodeEnvelopes(envs)
	if err != nil {
		return fmt.Errorf("stem: memory broker publish: %w", err)
	}
	s := b.space
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, env := range envs {
		s.insert(raws[i], env, now)
	}
	if len(envs) > 0 {
		s.signal()
	}
	return nil
}

// Claim leases up to req.Max ready messages, reading req.Queues in order.
// When none is ready it waits up to req.Wait; it returns nil and ctx.Err()
// when ctx ends first.
func (b *broker) Claim(ctx context.Context, req stemdriver.ClaimRequest) ([]stemdriver.Delivery, error) {
	if err := b.check("claim"); err != nil {
		return nil, err
	}
	switch {
	case len(req.Queues) == 0:
		return nil, errors.New("stem: memory broker claim: no queues given")
	case req.Max < 1:
		return nil, fmt.Errorf("stem: memory broker claim: max is %d, want at least 1", req.Max)
	case req.Lease <= 0:
		return nil, fmt.Errorf("stem: memory broker claim: lease is %v, want a positive duration", req.Lease)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(req.Wait)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		s := b.space
		now := time.Now()
		s.mu.Lock()
		ds := b.take(req, now)
		if len(ds) > 0 || !now.Before(deadline) {
			s.mu.Unlock()
			return ds, nil
		}
		until := deadline
		if next := s.nextDeadline(req.Queues); !next.IsZero() && next.Before(until) {
			until = next
		}
		wake := s.wake
		s.mu.Unlock()

		d := max(time.Until(until), 0)
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-b.closed:
			return nil, fmt.Errorf("stem: memory broker claim: %w", stemdriver.ErrClosed)
		case <-wake:
		case <-timer.C:
		}
	}
}

// take leases up to req.Max ready messages. b.space.mu must be held.
func (b *broker) take(req stemdriver.ClaimRequest, now time.Time) []stemdriver.Delivery {
	s := b.space
	var ds []stemdriver.Delivery
	for _, name := range req.Queues {
		q := s.queues[name]
		if q == nil {
			continue
		}
		s.tick(q, now)
		for len(ds) < req.Max && q.ready.Len() > 0 {
			m := heap.Pop(&q.ready).(*message)
			if m.receipt != "" {
				delete(s.held, m.receipt) // an expired lease, taken over
			}
			s.claims++
			m.receipt = strconv.FormatUint(m.seq, 36) + "." + strconv.FormatUint(s.claims, 36)
			m.state = stateLeased
			m.leaseUntil = now.Add(req.Lease)
			heap.Push(&q.leased, m)
			s.held[m.receipt] = m
			d := b.delivery(m)
			d.Redelivered = m.claimed
			m.claimed = true
			ds = append(ds, d)
		}
		if len(ds) == req.Max {
			break
		}
	}
	return ds
}

// delivery builds the Delivery of a freshly claimed m.
func (b *broker) delivery(m *message) stemdriver.Delivery {
	d := stemdriver.Delivery{Raw: append([]byte(nil), m.raw...), Queue: m.queue, Receipt: m.receipt}
	var env stemtype.Envelope
	if err := stemtype.DecodeEnvelope(m.raw, &env); err != nil {
		// Unreachable while Publish encodes every message itself; kept so
		// a future raw import path cannot lose a message silently.
		d.DecodeErr = fmt.Errorf("stem: memory broker: decode message in queue %s: %w", m.queue, err)
		b.logger.Warn("stem: memory broker: undecodable message", "queue", m.queue, "error", err)
		return d
	}
	d.Envelope = &env
	return d
}

// ExtendLease pushes the lease of d to now+lease. A holder whose lease
// expired keeps the message until another consumer re-claims it.
func (b *broker) ExtendLease(ctx context.Context, d stemdriver.Delivery, lease time.Duration) error {
	if err := b.check("extend lease"); err != nil {
		return err
	}
	if lease <= 0 {
		return fmt.Errorf("stem: memory broker extend lease: lease is %v, want a positive duration", lease)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s := b.space
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.lookup(d)
	if m == nil {
		return leaseLost("extend lease", d)
	}
	q := s.queues[m.queue]
	m.leaseUntil = time.Now().Add(lease)
	if m.state == stateReady {
		heap.Remove(&q.ready, m.index)
		m.state = stateLeased
		heap.Push(&q.leased, m)
		return nil
	}
	heap.Fix(&q.leased, m.index)
	return nil
}

// Ack removes the messages of ds. Deliveries whose lease was lost are
// reported, joined, with errors matching stemdriver.ErrLeaseLost; the others
// are still removed.
func (b *broker) Ack(ctx context.Context, ds ...stemdriver.Delivery) error {
	return b.eachHeld(ctx, "ack", ds, func(s *brokerSpace, m *message) { s.remove(m) })
}

// eachHeld applies fn, under the space's lock, to the message of every
// delivery of ds still held, and reports the others, joined, with errors
// matching stemdriver.ErrLeaseLost.
func (b *broker) eachHeld(ctx context.Context, op string, ds []stemdriver.Delivery, fn func(*brokerSpace, *message)) error {
	if err := b.check(op); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s := b.space
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, d := range ds {
		m := s.lookup(d)
		if m == nil {
			errs = append(errs, leaseLost(op, d))
			continue
		}
		fn(s, m)
	}
	return errors.Join(errs...)
}

// Retry replaces the message of d with next, in one step, while d is
// still held. A Retry of a delivery already retried, acked or taken over
// returns an error matching stemdriver.ErrLeaseLost and stores nothing, so
// a replayed Retry never duplicates next.
func (b *broker) Retry(ctx context.Context, d stemdriver.Delivery, next *stemtype.Envelope) error {
	if err := b.check("retry"); err != nil {
		return err
	}
	if err := next.Validate(); err != nil {
		return fmt.Errorf("stem: memory broker retry: %w", err)
	}
	raw, err := json.Marshal(next)
	if err != nil {
		return fmt.Errorf("stem: memory broker retry: encode envelope %s: %w", next.ID, err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s := b.space
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.lookup(d)
	if m == nil {
		return leaseLost("retry", d)
	}
	s.remove(m)
	s.insert(raw, next, time.Now())
	s.signal()
	return nil
}

// Release makes the messages of ds ready at once, unchanged, in their
// original place in the queue order.
func (b *broker) Release(ctx context.Context, ds ...stemdriver.Delivery) error {
	return b.eachHeld(ctx, "release", ds, func(s *brokerSpace, m *message) {
		delete(s.held, m.receipt)
		m.receipt = ""
		if m.state == stateLeased {
			q := s.queues[m.queue]
			heap.Remove(&q.leased, m.index)
			m.state = stateReady
			heap.Push(&q.ready, m)
		}
		s.signal() // waiting claims may take it now
	})
}

// DeadLetter removes the message of d and keeps it, with reason, in the
// namespace's dead letters of its queue (see Hub.DeadLetters).
func (b *broker) DeadLetter(ctx context.Context, d stemdriver.Delivery, reason string) error {
	if err := b.check("dead letter"); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s := b.space
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.lookup(d)
	if m == nil {
		return leaseLost("dead letter", d)
	}
	s.remove(m)
	s.dead[m.queue] = append(s.dead[m.queue], DeadLetter{Queue: m.queue, Raw: m.raw, Reason: reason, At: time.Now()})
	return nil
}

// Depth counts the ready and delayed messages of queue; a message whose
// lease expired counts as ready.
func (b *broker) Depth(ctx context.Context, queue string) (int64, error) {
	if err := b.check("depth"); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s := b.space
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queues[queue]
	if q == nil {
		return 0, nil
	}
	s.tick(q, time.Now())
	return int64(q.ready.Len() + q.delayed.Len()), nil
}

// Close closes b; a Claim blocked on b returns stemdriver.ErrClosed. Other
// brokers of the same Hub are unaffected. Close is idempotent.
func (b *broker) Close() error {
	b.closeOnce.Do(func() { close(b.closed) })
	return nil
}

func leaseLost(op string, d stemdriver.Delivery) error {
	return fmt.Errorf("stem: memory broker %s: receipt %q of queue %q: %w", op, d.Receipt, d.Queue, stemdriver.ErrLeaseLost)
}

// Delayed lists at most limit delayed messages of queue, soonest first,
// and how many it holds (stemdriver.DelayedLister).
func (b *broker) Delayed(ctx context.Context, queue string, limit int) ([]*stemtype.Envelope, int64, error) {
	if err := b.check("list delayed"); err != nil {
		return nil, 0, err
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	s := b.space
	s.mu.Lock()
	q := s.queues[queue]
	var ms []*message
	if q != nil {
		s.tick(q, time.Now())
		ms = slices.Clone(q.delayed.ms)
	}
	s.mu.Unlock()
	slices.SortFunc(ms, func(a, b *message) int {
		return cmp.Or(a.notBefore.Compare(b.notBefore), cmp.Compare(a.seq, b.seq))
	})
	total := int64(len(ms))
	out := make([]*stemtype.Envelope, 0, min(len(ms), max(limit, 0)))
	for _, m := range ms[:min(len(ms), max(limit, 0))] {
		var env stemtype.Envelope
		if err := stemtype.DecodeEnvelope(m.raw, &env); err != nil {
			return nil, 0, fmt.Errorf("stem: memory broker: decode a delayed message of queue %s: %w", queue, err)
		}
		out = append(out, &env)
	}
	return out, total, nil
}
