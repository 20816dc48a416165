package stemredis

import (
	"context"
	"errors"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

func TestRepliesCancelUnblocksAtOnce(t *testing.T) {
	ns := newNS(t)
	c := openTestControl(t, ns)
	c.maxBlock = time.Hour // only CLIENT UNBLOCK can end the wait early
	ctx := testCtx(t)
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- c.Replies(cctx, "req-1", func([]byte) bool { return true })
	}()
	waitBlocked(ctx, t, c.blk)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Replies after cancel = %v, want context.Canceled", err)
	}
	// The transport still works: a reply stored now is read.
	if err := c.Reply(ctx, "req-1", []byte("late")); err != nil {
		t.Fatal(err)
	}
	var got []string
	err := c.Replies(ctx, "req-1", func(m []byte) bool {
		got = append(got, string(m))
		return false
	})
	if err != nil || len(got) != 1 || got[0] != "late" {
		t.Fatalf("Replies = %q, %v; want [late]", got, err)
	}
}

func TestReplyStreamExpires(t *testing.T) {
	ns := newNS(t)
	c := openTestControl(t, ns)
	ctx := testCtx(t)
	if err := c.Reply(ctx, "req-ttl", []byte("r")); err != nil {
		t.Fatal(err)
	}
	ttl, err := rawClient(t).PTTL(ctx, replyKey(ns, "req-ttl")).Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl < time.Minute || ttl > replyTTL {
		t.Fatalf("reply stream TTL %v, want between a minute and %v", ttl, replyTTL)
	}
}

func TestCloseEndsSubscriptionsAndReplies(t *testing.T) {
	ns := newNS(t)
	c := openTestControl(t, ns)
	c.maxBlock = time.Hour
	ctx := testCtx(t)
	sub, err := c.Subscribe(ctx, "w1")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- c.Replies(ctx, "req-close", func([]byte) bool { return true })
	}()
	waitBlocked(ctx, t, c.blk)
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-done; !errors.Is(err, stemdriver.ErrClosed) {
		t.Fatalf("Replies during Close = %v, want ErrClosed", err)
	}
	if _, ok := <-sub.C(); ok {
		t.Fatal("subscription channel delivered a message after Close, want it closed")
	}
	if err := sub.Close(); err != nil {
		t.Fatalf("subscription Close after transport Close: %v", err)
	}
}

func TestTargetedPublishReachesWorkerWithBraces(t *testing.T) {
	ns := newNS(t)
	pub, subc := openTestControl(t, ns), openTestControl(t, ns)
	ctx := testCtx(t)
	sub, err := subc.Subscribe(ctx, "w{1}:x")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := pub.Publish(ctx, []string{"w{1}:x", "w{1}:x", "other"}, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctx, nil, []byte("all")); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"hi", "all"} {
		select {
		case m := <-sub.C():
			if string(m) != want {
				t.Fatalf("received %q, want %q", m, want)
			}
		case <-ctx.Done():
			t.Fatalf("waiting for %q: %v", want, ctx.Err())
		}
	}
}

func TestWorkersForgetsExpiredAndKeepsInfo(t *testing.T) {
	ns := newNS(t)
	c := openTestControl(t, ns)
	ctx := testCtx(t)
	info := stemtype.WorkerInfo{ID: "w1", Host: "h", PID: 42, Queues: []string{"q"}, Concurrency: 3}
	if err := c.Announce(ctx, info, time.Hour); err != nil {
		t.Fatal(err)
	}
	// A worker whose liveness already ended is not listed, and its index
	// entry is dropped.
	if err := c.Announce(ctx, stemtype.WorkerInfo{ID: "gone"}, time.Microsecond); err != nil {
		t.Fatal(err)
	}
	ws, err := c.Workers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 1 || ws[0].ID != "w1" || ws[0].PID != 42 || ws[0].Namespace != ns || ws[0].LastSeen.IsZero() {
		t.Fatalf("Workers = %+v, want w1 with its info, namespace and LastSeen", ws)
	}
	k := newPresenceKeys(ns)
	if err := rawClient(t).ZScore(ctx, k.live, "gone").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("index entry of the expired worker: %v, want none", err)
	}
}

// Every presence key expires on its own: a namespace whose workers were all
// killed leaves nothing behind, and a dead worker's entry cannot outlive
// its ttl however rarely Workers runs.
func TestPresenceKeysExpire(t *testing.T) {
	ns := newNS(t)
	c := openTestControl(t, ns)
	ctx := testCtx(t)
	if err := c.Announce(ctx, stemtype.WorkerInfo{ID: "long", Instance: "a"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	// A shorter ttl announced later does not shorten the index's.
	if err := c.Announce(ctx, stemtype.WorkerInfo{ID: "short:{x}", Instance: "b"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	rdb := rawClient(t)
	var keys []string
	iter := rdb.Scan(ctx, 0, "stem:{"+globEscape(escape(ns))+"}*", 100).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	if len(keys) == 0 {
		t.Fatal("no presence keys found")
	}
	for _, key := range keys {
		ttl, err := rdb.PTTL(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl <= 0 || ttl > time.Hour {
			t.Errorf("key %s has TTL %v, want one within the announced hour", key, ttl)
		}
	}
	if ttl, err := rdb.PTTL(ctx, newPresenceKeys(ns).live).Result(); err != nil || ttl <= time.Minute {
		t.Errorf("index TTL %v (%v), want the longest announced ttl", ttl, err)
	}
}

// dbURL returns the test server's URL with database db.
func dbURL(t testing.TB, db int) string {
	t.Helper()
	u, err := url.Parse(testutil.RedisURL())
	if err != nil {
		t.Fatalf("STEM_TEST_REDIS_URL: %v", err)
	}
	u.Path = "/" + strconv.Itoa(db)
	return u.String()
}

// openDBControl opens a control transport of namespace ns on database db of
// the test server, and deletes ns's keys there when t ends.
func openDBControl(t testing.TB, db int, ns string) *Control {
	t.Helper()
	rawClient(t) // skips when the server is unreachable
	u := dbURL(t, db)
	opt, err := redis.ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })
	t.Cleanup(func() { deleteNSKeys(t, rdb, ns) })
	c, err := OpenControl(testCtx(t), u, stemdriver.Options{Namespace: ns})
	if err != nil {
		t.Fatalf("OpenControl db %d: %v", db, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Two deployments with the same namespace on two databases of one server
// never see each other's commands, replies or presence, although Redis
// pub/sub channels are server-wide.
func TestControlDatabasesIsolated(t *testing.T) {
	ns := newNS(t)
	ctx := testCtx(t)
	dbs := [2]int{11, 12}
	var ctl [2]*Control
	var subs [2]stemdriver.ControlSubscription
	for i, db := range dbs {
		ctl[i] = openDBControl(t, db, ns)
		sub, err := ctl[i].Subscribe(ctx, "w1")
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		subs[i] = sub
	}
	recvUntil := func(i int, fence string) []string {
		t.Helper()
		var got []string
		for {
			select {
			case m := <-subs[i].C():
				if string(m) == fence {
					return got
				}
				got = append(got, string(m))
			case <-ctx.Done():
				t.Fatalf("db %d: waiting for %q: %v", dbs[i], fence, ctx.Err())
			}
		}
	}
	for i := range dbs {
		me, other := ctl[i], ctl[1-i]
		tag := "db" + strconv.Itoa(dbs[i])
		for _, m := range []struct {
			targets []string
			msg     string
		}{{nil, tag + "-broadcast"}, {[]string{"w1"}, tag + "-targeted"}, {nil, tag + "-fence"}} {
			if err := me.Publish(ctx, m.targets, []byte(m.msg)); err != nil {
				t.Fatal(err)
			}
		}
		if got := recvUntil(i, tag+"-fence"); len(got) != 2 {
			t.Fatalf("%s received %q of its own messages, want the broadcast and the targeted one", tag, got)
		}
		// The other database's subscriber: everything above was published
		// before this fence, on one connection to one server.
		if err := other.Publish(ctx, nil, []byte("fence")); err != nil {
			t.Fatal(err)
		}
		if got := recvUntil(1-i, "fence"); len(got) != 0 {
			t.Fatalf("db %d received %q published on %s", dbs[1-i], got, tag)
		}

		if err := me.Reply(ctx, "req-1", []byte(tag+"-reply")); err != nil {
			t.Fatal(err)
		}
		info := stemtype.WorkerInfo{ID: "w1", Host: tag, PID: 1, Instance: tag}
		if err := me.Announce(ctx, info, time.Minute); err != nil {
			t.Fatalf("%s: Announce of w1 (the same id as on the other database): %v", tag, err)
		}
	}
	for i := range dbs {
		tag := "db" + strconv.Itoa(dbs[i])
		var got []string
		if err := ctl[i].Replies(ctx, "req-1", func(m []byte) bool {
			got = append(got, string(m))
			return false
		}); err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0] != tag+"-reply" {
			t.Fatalf("%s: first reply to req-1 is %q, want its own", tag, got)
		}
		ws, err := ctl[i].Workers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(ws) != 1 || ws[0].Host != tag {
			t.Fatalf("%s lists workers %+v, want only its own w1", tag, ws)
		}
	}
}
