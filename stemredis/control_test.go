package stemredis

import (
	"context"
	"errors"
	"testing"
	"time"

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
	// A worker whose liveness already ended is dropped from both keys.
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
	if ok, err := rawClient(t).HExists(ctx, k.info, "gone").Result(); err != nil || ok {
		t.Fatalf("info of the expired worker still stored (%v)", err)
	}
}
