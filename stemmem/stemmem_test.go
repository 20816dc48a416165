package stemmem_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/stem-go/stem/internal/testutil"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemtype"
)

// These tests cover what the conformance suite leaves to each backend, and
// the memory backend's own choices. Tests about time run in a synctest
// bubble, where the clock only moves when every goroutine is blocked, so
// exact instants can be asserted without flakiness.

var ns = stemdriver.Options{Namespace: "ns"}

func env(id, queue string) *stemtype.Envelope {
	return &stemtype.Envelope{ID: id, Task: "t", Queue: queue, CreatedAt: time.Now()}
}

func claim(t *testing.T, b stemdriver.Broker, r stemdriver.ClaimRequest) []stemdriver.Delivery {
	t.Helper()
	if r.Max == 0 {
		r.Max = 100
	}
	if r.Lease == 0 {
		r.Lease = time.Minute
	}
	ds, err := b.Claim(t.Context(), r)
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	return ds
}

func ids(ds []stemdriver.Delivery) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = d.Envelope.ID
	}
	return strings.Join(s, ",")
}

func publish(t *testing.T, b stemdriver.Broker, envs ...*stemtype.Envelope) {
	t.Helper()
	if err := b.Publish(t.Context(), envs...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

func TestPriorityThenFIFO(t *testing.T) {
	b := stemmem.New().Broker(ns)
	envs := []*stemtype.Envelope{env("low-1", "q"), env("high-1", "q"), env("low-2", "q"), env("high-2", "q"), env("mid", "q")}
	envs[1].Priority, envs[3].Priority, envs[4].Priority = 9, 9, 5
	publish(t, b, envs...)
	ds := claim(t, b, stemdriver.ClaimRequest{Queues: []string{"q"}, Lease: time.Minute})
	if got, want := ids(ds), "high-1,high-2,mid,low-1,low-2"; got != want {
		t.Fatalf("claim order %s, want %s", got, want)
	}
	// Released messages keep their place.
	if err := b.Release(t.Context(), ds[3], ds[0]); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if got, want := ids(claim(t, b, stemdriver.ClaimRequest{Queues: []string{"q"}})), "high-1,low-1"; got != want {
		t.Fatalf("order after Release %s, want %s", got, want)
	}
}

func TestQueuesReadInOrder(t *testing.T) {
	b := stemmem.New().Broker(ns)
	publish(t, b, env("a-1", "a"), env("b-1", "b"), env("a-2", "a"))
	ds := claim(t, b, stemdriver.ClaimRequest{Queues: []string{"b", "a"}, Max: 2})
	if got, want := ids(ds), "b-1,a-1"; got != want {
		t.Fatalf("claimed %s, want %s", got, want)
	}
}

func TestDeadLettersKeepRawAndReason(t *testing.T) {
	hub := stemmem.New()
	b := hub.Broker(ns)
	publish(t, b, env("poison", "q"))
	d := claim(t, b, stemdriver.ClaimRequest{Queues: []string{"q"}})[0]
	if err := b.DeadLetter(t.Context(), d, "unknown task"); err != nil {
		t.Fatalf("DeadLetter: %v", err)
	}
	dls := hub.DeadLetters("ns", "q")
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dls))
	}
	if dls[0].Queue != "q" || dls[0].Reason != "unknown task" || !bytes.Equal(dls[0].Raw, d.Raw) || dls[0].At.IsZero() {
		t.Fatalf("dead letter %+v, want queue q, reason, raw %s and a time", dls[0], d.Raw)
	}
	dls[0].Raw[0] = 'X'
	if again := hub.DeadLetters("ns", "q"); !bytes.Equal(again[0].Raw, d.Raw) {
		t.Fatal("DeadLetters returned the stored bytes, not a copy")
	}
	if n := len(hub.DeadLetters("other", "q")); n != 0 {
		t.Fatalf("another namespace has %d dead letters", n)
	}
	if err := b.DeadLetter(t.Context(), d, "again"); !errors.Is(err, stemdriver.ErrLeaseLost) {
		t.Fatalf("second DeadLetter = %v, want ErrLeaseLost", err)
	}
}

func TestStoredBytesAreCopies(t *testing.T) {
	b := stemmem.New().Broker(ns)
	publish(t, b, env("e", "q"))
	d := claim(t, b, stemdriver.ClaimRequest{Queues: []string{"q"}})[0]
	want := bytes.Clone(d.Raw)
	d.Raw[0] = 'X'
	if err := b.Release(t.Context(), d); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if got := claim(t, b, stemdriver.ClaimRequest{Queues: []string{"q"}})[0].Raw; !bytes.Equal(got, want) {
		t.Fatalf("raw after changing a delivery's = %s, want %s", got, want)
	}
}

func TestPublishIsAllOrNothing(t *testing.T) {
	b := stemmem.New().Broker(ns)
	bad := env("bad", "q")
	bad.Task = ""
	if err := b.Publish(t.Context(), env("good", "q"), bad); err == nil || !strings.Contains(err.Error(), "bad") {
		t.Fatalf("Publish with an invalid envelope = %v, want an error naming it", err)
	}
	if n, err := b.Depth(t.Context(), "q"); err != nil || n != 0 {
		t.Fatalf("Depth after a failed Publish = (%d, %v), want (0, nil)", n, err)
	}
}

func TestClaimRejectsBadRequests(t *testing.T) {
	b := stemmem.New().Broker(ns)
	for name, r := range map[string]stemdriver.ClaimRequest{
		"no queues": {Max: 1, Lease: time.Second},
		"max 0":     {Queues: []string{"q"}, Lease: time.Second},
		"no lease":  {Queues: []string{"q"}, Max: 1},
	} {
		if _, err := b.Claim(t.Context(), r); err == nil || !strings.HasPrefix(err.Error(), "stem: ") {
			t.Errorf("%s: Claim = %v, want a stem: error", name, err)
		}
	}
}

func TestAckTwiceIsLeaseLost(t *testing.T) {
	b := stemmem.New().Broker(ns)
	publish(t, b, env("e", "q"), env("f", "q"))
	ds := claim(t, b, stemdriver.ClaimRequest{Queues: []string{"q"}})
	if err := b.Ack(t.Context(), ds[0]); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	// A batch with one stale delivery reports it and still acks the rest.
	err := b.Ack(t.Context(), ds[0], ds[1])
	if !errors.Is(err, stemdriver.ErrLeaseLost) || !strings.Contains(err.Error(), ds[0].Receipt) {
		t.Fatalf("second Ack = %v, want ErrLeaseLost naming receipt %s", err, ds[0].Receipt)
	}
	if n, _ := b.Depth(t.Context(), "q"); n != 0 {
		t.Fatalf("Depth = %d, want 0", n)
	}
	if ds := claim(t, b, stemdriver.ClaimRequest{Queues: []string{"q"}}); len(ds) != 0 {
		t.Fatalf("claimed %s after acking everything", ids(ds))
	}
}

func TestClaimWakesAtNotBefore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := stemmem.New().Broker(ns)
		start := time.Now()
		e := env("later", "q")
		e.NotBefore = start.Add(time.Hour)
		publish(t, b, e)
		ds := claim(t, b, stemdriver.ClaimRequest{Queues: []string{"q"}, Wait: 2 * time.Hour})
		if ids(ds) != "later" {
			t.Fatalf("claimed %q, want later", ids(ds))
		}
		if elapsed := time.Since(start); elapsed != time.Hour {
			t.Fatalf("Claim returned after %v, want exactly at NotBefore (1h)", elapsed)
		}
	})
}

func TestClaimWakesAtLeaseExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hub := stemmem.New()
		a, b := hub.Broker(ns), hub.Broker(ns)
		publish(t, a, env("e", "q"))
		start := time.Now()
		da := claim(t, a, stemdriver.ClaimRequest{Queues: []string{"q"}, Lease: time.Minute})[0]
		db := claim(t, b, stemdriver.ClaimRequest{Queues: []string{"q"}, Wait: time.Hour})
		if len(db) != 1 || time.Since(start) != time.Minute {
			t.Fatalf("re-claimed %d after %v, want 1 exactly when the lease expired (1m)", len(db), time.Since(start))
		}
		if db[0].Receipt == da.Receipt {
			t.Fatalf("re-claim kept receipt %s", da.Receipt)
		}
	})
}

func TestClaimWaitEndsEmpty(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := stemmem.New().Broker(ns)
		start := time.Now()
		if ds := claim(t, b, stemdriver.ClaimRequest{Queues: []string{"q"}, Wait: time.Minute}); len(ds) != 0 {
			t.Fatalf("claimed %s from an empty queue", ids(ds))
		}
		if elapsed := time.Since(start); elapsed != time.Minute {
			t.Fatalf("Claim returned after %v, want the full Wait (1m)", elapsed)
		}
	})
}

func TestExpiredLeaseStaysWithHolderUntilReclaimed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := stemmem.New().Broker(ns)
		publish(t, b, env("e", "q"), env("f", "q"))
		ds := claim(t, b, stemdriver.ClaimRequest{Queues: []string{"q"}, Lease: time.Second})
		time.Sleep(2 * time.Second) // both leases expire; nobody re-claims
		if n, _ := b.Depth(t.Context(), "q"); n != 2 {
			t.Fatalf("Depth with two expired leases = %d, want 2", n)
		}
		if err := b.ExtendLease(t.Context(), ds[0], time.Hour); err != nil {
			t.Fatalf("ExtendLease of an expired, unclaimed lease: %v", err)
		}
		if err := b.Ack(t.Context(), ds[1]); err != nil {
			t.Fatalf("Ack of an expired, unclaimed lease: %v", err)
		}
		if got := claim(t, b, stemdriver.ClaimRequest{Queues: []string{"q"}}); len(got) != 0 {
			t.Fatalf("claimed %s, want nothing: one extended, one acked", ids(got))
		}
	})
}

func TestCloseEndsBlockedClaim(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hub := stemmem.New()
		b, other := hub.Broker(ns), hub.Broker(ns)
		done := make(chan error, 1)
		go func() {
			_, err := b.Claim(t.Context(), stemdriver.ClaimRequest{Queues: []string{"q"}, Max: 1, Lease: time.Second, Wait: time.Hour})
			done <- err
		}()
		synctest.Wait() // the Claim is blocked
		if err := b.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := <-done; !errors.Is(err, stemdriver.ErrClosed) {
			t.Fatalf("blocked Claim after Close = %v, want ErrClosed", err)
		}
		publish(t, other, env("e", "q")) // the hub and other values live on
	})
}

func TestFullSubscriberDropsWithWarning(t *testing.T) {
	var logs testutil.SyncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	hub := stemmem.New()
	c := hub.Control(stemdriver.Options{Namespace: "ns", Logger: logger})
	slow, err := c.Subscribe(t.Context(), "slow")
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer slow.Close()
	// Nobody reads slow: Publish must still return every time.
	const sent = 300
	for i := range sent {
		if err := c.Publish(t.Context(), nil, fmt.Appendf(nil, "m%d", i)); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	if out := logs.String(); !strings.Contains(out, "message dropped") || !strings.Contains(out, "worker_id=slow") {
		t.Fatalf("log %q, want a dropped-message warning naming worker_id=slow", out)
	}
	// What fit in the buffer arrives in order, starting with the first.
	if got := string(<-slow.C()); got != "m0" {
		t.Fatalf("first message %q, want m0", got)
	}
}

func TestReplyExpiresAfterAMinute(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := stemmem.New().Control(ns)
		if err := c.Reply(t.Context(), "req", []byte("old")); err != nil {
			t.Fatalf("Reply: %v", err)
		}
		time.Sleep(time.Minute)
		if err := c.Reply(t.Context(), "req", []byte("new")); err != nil {
			t.Fatalf("Reply: %v", err)
		}
		var got []string
		err := c.Replies(t.Context(), "req", func(msg []byte) bool {
			got = append(got, string(msg))
			return false
		})
		if err != nil || strings.Join(got, ",") != "new" {
			t.Fatalf("Replies = %q, %v; want only the reply of the last minute", got, err)
		}
	})
}

func TestWaitingCollectorOutlivesReplyExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := stemmem.New().Control(ns)
		got := make(chan string, 1)
		go func() {
			_ = c.Replies(t.Context(), "req", func(msg []byte) bool {
				got <- string(msg)
				return false
			})
		}()
		synctest.Wait()
		time.Sleep(2 * time.Minute)
		if err := c.Reply(t.Context(), "other", nil); err != nil { // sweeps expired logs
			t.Fatalf("Reply: %v", err)
		}
		if err := c.Reply(t.Context(), "req", []byte("late")); err != nil {
			t.Fatalf("Reply: %v", err)
		}
		if msg := <-got; msg != "late" {
			t.Fatalf("collector got %q, want late", msg)
		}
	})
}

func TestControlCloseEndsSubscriptionsAndReplies(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hub := stemmem.New()
		c, other := hub.Control(ns), hub.Control(ns)
		sub, err := c.Subscribe(t.Context(), "w1")
		if err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
		keep, err := other.Subscribe(t.Context(), "w2")
		if err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
		done := make(chan error, 1)
		go func() { done <- c.Replies(t.Context(), "req", func([]byte) bool { return true }) }()
		synctest.Wait()
		if err := c.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := <-done; !errors.Is(err, stemdriver.ErrClosed) {
			t.Fatalf("Replies after Close = %v, want ErrClosed", err)
		}
		if _, ok := <-sub.C(); ok {
			t.Fatal("subscription of a closed transport still open")
		}
		if _, err := c.Subscribe(t.Context(), "w3"); !errors.Is(err, stemdriver.ErrClosed) {
			t.Fatalf("Subscribe after Close = %v, want ErrClosed", err)
		}
		if err := other.Publish(t.Context(), nil, []byte("still here")); err != nil {
			t.Fatalf("Publish on another value: %v", err)
		}
		if got := string(<-keep.C()); got != "still here" {
			t.Fatalf("other subscription got %q", got)
		}
		_ = keep.Close()
	})
}

func TestAnnounceRejectsBadInput(t *testing.T) {
	c := stemmem.New().Control(ns)
	if err := c.Announce(t.Context(), stemtype.WorkerInfo{}, time.Minute); err == nil {
		t.Error("Announce without an id succeeded")
	}
	if err := c.Announce(t.Context(), stemtype.WorkerInfo{ID: "w1"}, 0); err == nil {
		t.Error("Announce with a zero ttl succeeded")
	}
}

func TestRevokesRejectInvalidRecords(t *testing.T) {
	rs := stemmem.New().Revokes()
	good := stemtype.RevokeRecord{Namespace: "ns", TaskID: "a", Version: 1}
	bad := stemtype.RevokeRecord{Namespace: "ns", TaskID: "b"}
	if _, err := rs.Upsert(t.Context(), good, bad); err == nil || !strings.Contains(err.Error(), "version") {
		t.Fatalf("Upsert with version 0 = %v, want an error about the version", err)
	}
	if recs, err := rs.List(t.Context(), "ns"); err != nil || len(recs) != 0 {
		t.Fatalf("List after a rejected Upsert = (%d records, %v), want none", len(recs), err)
	}
}

func TestCanceledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	hub := stemmem.New()
	if err := hub.Broker(ns).Publish(ctx, env("e", "q")); !errors.Is(err, context.Canceled) {
		t.Errorf("Publish = %v, want context.Canceled", err)
	}
	if _, err := hub.Results(ns).Get(ctx, "e"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get = %v, want context.Canceled", err)
	}
	if _, err := hub.Revokes().List(ctx, "ns"); !errors.Is(err, context.Canceled) {
		t.Errorf("List = %v, want context.Canceled", err)
	}
	if err := hub.Control(ns).Replies(ctx, "r", func([]byte) bool { return true }); !errors.Is(err, context.Canceled) {
		t.Errorf("Replies = %v, want context.Canceled", err)
	}
}

func TestDelayedClaimedByDueTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := stemmem.New().Broker(ns)
		envs := []*stemtype.Envelope{env("late", "q"), env("early", "q"), env("mid", "q")}
		for i, d := range []time.Duration{3, 1, 2} {
			envs[i].NotBefore = time.Now().Add(d * time.Second)
		}
		publish(t, b, envs...)
		publish(t, b, env("ready", "q"))
		time.Sleep(4 * time.Second) // all three fall due before the claim
		if got, want := ids(claim(t, b, stemdriver.ClaimRequest{Queues: []string{"q"}})), "ready,early,mid,late"; got != want {
			t.Fatalf("claim order %s, want %s", got, want)
		}
	})
}

func TestLostLeaseOperationsStoreNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hub := stemmem.New()
		b := hub.Broker(ns)
		publish(t, b, env("e", "q"))
		old := claim(t, b, stemdriver.ClaimRequest{Queues: []string{"q"}, Lease: time.Second})[0]
		time.Sleep(2 * time.Second)
		cur := claim(t, b, stemdriver.ClaimRequest{Queues: []string{"q"}})[0]
		if err := b.DeadLetter(t.Context(), old, "lost"); !errors.Is(err, stemdriver.ErrLeaseLost) {
			t.Fatalf("DeadLetter of a lost lease = %v, want ErrLeaseLost", err)
		}
		if err := b.Release(t.Context(), old); !errors.Is(err, stemdriver.ErrLeaseLost) {
			t.Fatalf("Release of a lost lease = %v, want ErrLeaseLost", err)
		}
		if n := len(hub.DeadLetters("ns", "q")); n != 0 {
			t.Fatalf("%d dead letters after a lost-lease DeadLetter, want 0", n)
		}
		if got := claim(t, b, stemdriver.ClaimRequest{Queues: []string{"q"}}); len(got) != 0 {
			t.Fatalf("claimed %s after a lost-lease Release, want nothing", ids(got))
		}
		if err := b.Ack(t.Context(), cur); err != nil {
			t.Fatalf("Ack by the current holder: %v", err)
		}
	})
}
