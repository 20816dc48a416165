package stemredis

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// replyDropper is a TCP proxy in front of the test Redis that, when armed
// with a command name, lets the next request holding that name reach the
// server and then closes the client's connection instead of passing the
// reply on: the server ran the command and its reply was lost, the case
// in which go-redis sends the command again (max_retries) on a new
// connection.
type replyDropper struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	armed []byte // lowercase command name, nil when disarmed
	// dropped counts the replies dropped.
	dropped atomic.Int32
	wg      sync.WaitGroup
	conns   map[net.Conn]struct{}
}

// newReplyDropper starts a proxy to the test Redis, stopped when t ends,
// and returns it with the test URL rewritten to go through it (query
// appended to the URL's own).
func newReplyDropper(t *testing.T, query string) (*replyDropper, string) {
	t.Helper()
	rawClient(t) // skips when the server is unreachable
	u, err := url.Parse(testutil.RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &replyDropper{ln: ln, target: u.Host, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	u.Host = ln.Addr().String()
	if query != "" {
		if u.RawQuery != "" {
			u.RawQuery += "&"
		}
		u.RawQuery += query
	}
	return p, u.String()
}

// arm makes the proxy drop the reply of the next request holding cmd.
func (p *replyDropper) arm(cmd string) {
	p.mu.Lock()
	p.armed = bytes.ToLower([]byte(cmd))
	p.mu.Unlock()
}

func (p *replyDropper) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *replyDropper) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *replyDropper) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		if !p.track(c) || !p.track(s) {
			_ = c.Close()
			_ = s.Close()
			continue
		}
		var dropNext atomic.Bool
		p.wg.Add(2)
		go func() { // client -> server
			defer p.wg.Done()
			defer s.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					p.mu.Lock()
					if p.armed != nil && bytes.Contains(bytes.ToLower(buf[:n]), p.armed) {
						p.armed = nil
						dropNext.Store(true)
					}
					p.mu.Unlock()
					if _, err := s.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
		go func() { // server -> client
			defer p.wg.Done()
			defer c.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := s.Read(buf)
				if n > 0 {
					if dropNext.Load() {
						p.dropped.Add(1)
						_ = s.Close()
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					if !errors.Is(err, io.EOF) {
						_ = s.Close()
					}
					return
				}
			}
		}()
	}
}

// openBrokerAt opens a broker of namespace ns on the Redis at u.
func openBrokerAt(t *testing.T, u, ns string) *Broker {
	t.Helper()
	b, err := OpenBroker(testCtx(t), u, stemdriver.Options{Namespace: ns})
	if err != nil {
		t.Fatalf("OpenBroker: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func ids(ds []stemdriver.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Envelope.ID
	}
	slices.Sort(out)
	return out
}

// runClaimScript runs the claim script on queue q of ns under token, as
// claimOnce does, and returns the task ids and receipts it leased.
func runClaimScript(ctx context.Context, t *testing.T, b *Broker, q, token string, max int) (taskIDs, receipts []string) {
	t.Helper()
	k := newQueueKeys(b.ns, q)
	res, err := claimScript.run(ctx, b.rdb, []string{k.stream, k.leases, k.delayed, k.claimKey(token)},
		group, "c", max, time.Minute.Microseconds(), "1", "0", consumerIdle.Milliseconds(), time.Minute.Milliseconds(),
	).Slice()
	if err != nil {
		t.Fatalf("claim script: %v", err)
	}
	for i := 2; i+2 < len(res); i += 3 {
		id, _ := res[i].(string)
		raw, _ := res[i+1].(string)
		d := decodeDelivery(q, id, []byte(raw))
		if d.DecodeErr != nil {
			t.Fatal(d.DecodeErr)
		}
		taskIDs = append(taskIDs, d.Envelope.ID)
		receipts = append(receipts, id)
	}
	return taskIDs, receipts
}

// TestClaimScriptReplayReturnsTheSameDeliveries runs the claim script
// twice under one token, as a replay after a lost reply does: the second
// run leases nothing new and returns the first run's messages, so none is
// stranded until its lease expires. A replay asking for fewer releases the
// rest at once, and a new token claims the next messages.
func TestClaimScriptReplayReturnsTheSameDeliveries(t *testing.T) {
	t.Parallel()
	ns := newNS(t)
	b := openTestBroker(t, ns)
	ctx := testCtx(t)
	if err := b.Publish(ctx, testEnvelopes("x", "q", 5)...); err != nil {
		t.Fatal(err)
	}
	rdb := rawClient(t)
	k := newQueueKeys(ns, "q")

	first, rec1 := runClaimScript(ctx, t, b, "q", "tok1", 2)
	again, rec2 := runClaimScript(ctx, t, b, "q", "tok1", 2)
	if !slices.Equal(first, []string{"x-0", "x-1"}) || !slices.Equal(again, first) || !slices.Equal(rec2, rec1) {
		t.Fatalf("claim then replay: %v %v, then %v %v; want x-0 x-1 twice under the same receipts", first, rec1, again, rec2)
	}
	if n, err := rdb.ZCard(ctx, k.leases).Result(); err != nil || n != 2 {
		t.Fatalf("leases after a replayed claim: %d, %v; want 2 (nothing leased twice)", n, err)
	}

	next, _ := runClaimScript(ctx, t, b, "q", "tok2", 2)
	if !slices.Equal(next, []string{"x-2", "x-3"}) {
		t.Fatalf("claim under a new token: %v, want x-2 x-3", next)
	}
	fewer, _ := runClaimScript(ctx, t, b, "q", "tok2", 1)
	if !slices.Equal(fewer, []string{"x-2"}) {
		t.Fatalf("replay asking for 1: %v, want x-2", fewer)
	}
	if n, err := rdb.ZCard(ctx, k.leases).Result(); err != nil || n != 3 {
		t.Fatalf("leases after a replay asking for fewer: %d, %v; want 3 (x-3 released)", n, err)
	}
	// x-3 was released behind x-4, marked redelivered.
	ds := claimAll(ctx, t, b, 2, time.Minute, "q")
	if got := ids(ds); !slices.Equal(got, []string{"x-3", "x-4"}) {
		t.Fatalf("claim after the release: %v, want x-3 x-4", got)
	}
	for _, d := range ds {
		if want := d.Envelope.ID == "x-3"; d.Redelivered != want {
			t.Errorf("%s: Redelivered = %v, want %v", d.Envelope.ID, d.Redelivered, want)
		}
	}
	if err := b.Ack(ctx, ds...); err != nil {
		t.Fatal(err)
	}
	// A replay once every recorded message is finished claims afresh.
	if err := b.Publish(ctx, testEnvelopes("y", "q", 1)...); err != nil {
		t.Fatal(err)
	}
	acked := []stemdriver.Delivery{{Queue: "q", Receipt: rec1[0]}, {Queue: "q", Receipt: rec1[1]}}
	if err := b.Ack(ctx, acked...); err != nil {
		t.Fatal(err)
	}
	if late, _ := runClaimScript(ctx, t, b, "q", "tok1", 2); !slices.Equal(late, []string{"y-0"}) {
		t.Fatalf("replay after its messages were acked: %v, want a fresh claim of y-0", late)
	}
}

// warmScripts loads every script on the server through b, so that an
// armed replyDropper meets EVALSHA and not the NOSCRIPT that precedes a
// script's first EVAL.
func warmScripts(ctx context.Context, t *testing.T, b *Broker) {
	t.Helper()
	for _, s := range []*script{claimScript, ackScript, releaseScript, retryScript, deadLetterScript} {
		if err := b.rdb.ScriptLoad(ctx, s.src).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestClaimReplyLostIsReplayedWithItsToken loses the reply of a claim on
// the wire: go-redis sends the script again on a new connection, and the
// replay returns the message the first run leased. Before claims had a
// token, the replay leased the next message and x-0 stayed leased by
// nobody until its lease expired.
func TestClaimReplyLostIsReplayedWithItsToken(t *testing.T) {
	t.Parallel()
	proxy, u := newReplyDropper(t, "")
	ns := newNS(t)
	b := openBrokerAt(t, u, ns)
	ctx := testCtx(t)
	warmScripts(ctx, t, b)
	if err := b.Publish(ctx, testEnvelopes("x", "q", 2)...); err != nil {
		t.Fatal(err)
	}
	proxy.arm("evalsha")
	ds, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 1, Lease: time.Minute})
	if err != nil {
		t.Fatalf("Claim with a lost reply: %v (go-redis should have replayed it)", err)
	}
	if proxy.dropped.Load() != 1 {
		t.Fatalf("replies dropped: %d, want 1", proxy.dropped.Load())
	}
	if got := ids(ds); !slices.Equal(got, []string{"x-0"}) {
		t.Fatalf("replayed claim returned %v, want x-0", got)
	}
	if n, err := rawClient(t).ZCard(ctx, newQueueKeys(ns, "q").leases).Result(); err != nil || n != 1 {
		t.Fatalf("leased messages after the replayed claim: %d, %v; want 1 (none stranded)", n, err)
	}
}

// TestClaimFailedIsReplayedByTheNextClaim loses a claim's reply with
// go-redis's replays off: Claim fails, and the next Claim of the consumer
// on the queue replays the failed one's token and gets its message.
func TestClaimFailedIsReplayedByTheNextClaim(t *testing.T) {
	t.Parallel()
	proxy, u := newReplyDropper(t, "max_retries=-1")
	ns := newNS(t)
	b := openBrokerAt(t, u, ns)
	ctx := testCtx(t)
	warmScripts(ctx, t, b)
	if err := b.Publish(ctx, testEnvelopes("x", "q", 2)...); err != nil {
		t.Fatal(err)
	}
	req := stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 1, Lease: time.Minute}
	proxy.arm("evalsha")
	if ds, err := b.Claim(ctx, req); err == nil {
		t.Fatalf("Claim with a lost reply and no replays: %v, nil; want an error", ids(ds))
	}
	ds, err := b.Claim(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(ds); !slices.Equal(got, []string{"x-0"}) {
		t.Fatalf("claim after a failed one returned %v, want x-0 (the failed claim's message)", got)
	}
	if n, err := rawClient(t).ZCard(ctx, newQueueKeys(ns, "q").leases).Result(); err != nil || n != 1 {
		t.Fatalf("leased messages: %d, %v; want 1 (none stranded)", n, err)
	}
	// Its record is deleted by the next claim on the queue.
	ds2, err := b.Claim(ctx, req)
	if err != nil || len(ds2) != 1 {
		t.Fatalf("third claim: %d deliveries, %v; want x-1", len(ds2), err)
	}
	keys, err := rawClient(t).Keys(ctx, globEscape(newQueueKeys(ns, "q").claimPrefix)+"*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("claim records left: %v, %v; want only the last claim's", keys, err)
	}
}

// TestFinishReplayedAfterLostReplyChangesNothingTwice loses the reply of
// Ack, Release, Retry and DeadLetter on the wire, so that go-redis runs
// each script a second time: the state changes once (the replay finds no
// lease and reports ErrLeaseLost, which the worker takes as "nothing left
// to do").
func TestFinishReplayedAfterLostReplyChangesNothingTwice(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		op   func(ctx context.Context, b *Broker, d stemdriver.Delivery) error
		// stream and dead are the entries left in q's stream and dead
		// letters, next the messages of queue q2.
		stream, dead, next int64
	}{
		{"Ack", func(ctx context.Context, b *Broker, d stemdriver.Delivery) error { return b.Ack(ctx, d) }, 0, 0, 0},
		{"Release", func(ctx context.Context, b *Broker, d stemdriver.Delivery) error { return b.Release(ctx, d) }, 1, 0, 0},
		{"DeadLetter", func(ctx context.Context, b *Broker, d stemdriver.Delivery) error {
			return b.DeadLetter(ctx, d, "test")
		}, 0, 1, 0},
		{"Retry", func(ctx context.Context, b *Broker, d stemdriver.Delivery) error {
			next := *d.Envelope
			next.Queue, next.Attempt = "q2", 1
			return b.Retry(ctx, d, &next)
		}, 0, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			proxy, u := newReplyDropper(t, "")
			ns := newNS(t)
			b := openBrokerAt(t, u, ns)
			ctx := testCtx(t)
			warmScripts(ctx, t, b)
			if err := b.Publish(ctx, testEnvelopes("x", "q", 1)...); err != nil {
				t.Fatal(err)
			}
			d := claimAll(ctx, t, b, 1, time.Minute, "q")[0]
			proxy.arm("evalsha")
			err := tc.op(ctx, b, d)
			if proxy.dropped.Load() != 1 {
				t.Fatalf("replies dropped: %d, want 1", proxy.dropped.Load())
			}
			if err != nil && !errors.Is(err, stemdriver.ErrLeaseLost) {
				t.Fatalf("%s replayed after a lost reply: %v, want nil or ErrLeaseLost", tc.name, err)
			}
			rdb := rawClient(t)
			k, k2 := newQueueKeys(ns, "q"), newQueueKeys(ns, "q2")
			for _, c := range []struct {
				what string
				key  string
				want int64
			}{{"stream entries", k.stream, tc.stream}, {"dead letters", k.dead, tc.dead}, {"next attempts", k2.stream, tc.next}} {
				n, err := rdb.XLen(ctx, c.key).Result()
				if err != nil && !errors.Is(err, redis.Nil) {
					t.Fatal(err)
				}
				if n != c.want {
					t.Errorf("%s after a replayed %s: %d, want %d", c.what, tc.name, n, c.want)
				}
			}
			if n, err := rdb.ZCard(ctx, k.leases).Result(); err != nil || n != 0 {
				t.Errorf("leases after a replayed %s: %d, %v; want 0", tc.name, n, err)
			}
		})
	}
}

// TestPublishReplyLostIsAnErrorNotADuplicate loses the reply of a publish:
// the producer gets an error (the message may or may not be stored) and
// the message is stored once, never twice by a replay.
func TestPublishReplyLostIsAnErrorNotADuplicate(t *testing.T) {
	t.Parallel()
	for _, withResults := range []bool{false, true} {
		proxy, u := newReplyDropper(t, "")
		ns := newNS(t)
		b := openBrokerAt(t, u, ns)
		ctx := testCtx(t)
		envs := testEnvelopes("x", "q", 1)
		proxy.arm("xadd")
		var err error
		if withResults {
			r, rerr := OpenResults(ctx, u, stemdriver.Options{Namespace: ns})
			if rerr != nil {
				t.Fatal(rerr)
			}
			pend := []*stemtype.TaskResult{{ID: envs[0].ID, Task: envs[0].Task, Queue: "q", State: stemtype.StatePending}}
			var done bool
			done, err = b.PublishWithResults(ctx, r, pend, envs)
			_ = r.Close()
			if !done {
				t.Fatal("PublishWithResults did not publish")
			}
		} else {
			err = b.Publish(ctx, envs...)
		}
		if err == nil {
			t.Errorf("publish (with results %v) whose reply was lost returned nil, want an error", withResults)
		}
		if n, err := rawClient(t).XLen(ctx, newQueueKeys(ns, "q").stream).Result(); err != nil || n != 1 {
			t.Errorf("messages stored by a publish (with results %v) whose reply was lost: %d, %v; want 1", withResults, n, err)
		}
	}
}
