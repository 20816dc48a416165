package stemdrivertest

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// controlProperties lists the Control tests: every control transport passes
// them.
var controlProperties = []property[stemdriver.ControlTransport]{
	{name: "BroadcastReachesEverySubscriber", fn: testControlBroadcastReachesEverySubscriber},
	{name: "BroadcastReachesEverySubscriptionOfOneConnection", fn: testControlBroadcastReachesEverySubscriptionOfOneConnection},
	{name: "TargetedReachesOnlyTargets", fn: testControlTargetedReachesOnlyTargets},
	{name: "NamespacesIsolated", fn: testControlNamespacesIsolated},
	{name: "OpaqueBytesDeliveredUnchanged", fn: testControlOpaqueBytesDeliveredUnchanged},
	{name: "LateCollectorGetsStoredReplies", fn: testControlLateCollectorGetsStoredReplies},
	{name: "RepliesStopsWhenFnReturnsFalse", fn: testControlRepliesStopsWhenFnReturnsFalse},
	{name: "RepliesEndsWithContext", fn: testControlRepliesEndsWithContext},
	{name: "RepliesIsolatedByRequestAndNamespace", fn: testControlRepliesIsolatedByRequestAndNamespace},
	{name: "PresenceAnnounceWithdrawExpire", fn: testControlPresenceAnnounceWithdrawExpire},
	{name: "AnnounceRefusesLiveIDOfAnotherInstance", fn: testControlAnnounceRefusesLiveIDOfAnotherInstance},
	{name: "WithdrawOfAnotherInstanceLeavesEntry", fn: testControlWithdrawOfAnotherInstanceLeavesEntry},
	{name: "ExpiryFreesWorkerID", fn: testControlExpiryFreesWorkerID},
	{name: "SubscriptionCloseClosesC", fn: testControlSubscriptionCloseClosesC},
	{name: "ClosedReturnsErrClosed", fn: testControlClosedReturnsErrClosed},
}

func testControlBroadcastReachesEverySubscriber(t *testing.T, open opener[stemdriver.ControlTransport], ns string) {
	ctx := testContext(t)
	ids := []string{"w1", "w2", "w3"}
	subs := make([]stemdriver.ControlSubscription, len(ids))
	for i, id := range ids {
		subs[i] = mustSubscribe(ctx, t, open(t, ns), id)
	}
	pub := open(t, ns)
	mustPublishControl(ctx, t, pub, nil, "b1")
	mustPublishControl(ctx, t, pub, []string{stemtype.BroadcastTarget}, "b2")
	mustPublishControl(ctx, t, pub, []string{"w1", stemtype.BroadcastTarget}, "b3")
	mustPublishControl(ctx, t, pub, nil, "fence")
	for i, sub := range subs {
		assertEqual(t, "messages to "+ids[i], recvUntil(ctx, t, sub, "fence"), []string{"b1", "b2", "b3"})
	}
}

// testControlBroadcastReachesEverySubscriptionOfOneConnection: the
// property of testControlBroadcastReachesEverySubscriber with the three
// subscriptions on one connection (one transport value, as several workers
// of one process share), and the broadcast target given twice: each still
// gets one copy.
func testControlBroadcastReachesEverySubscriptionOfOneConnection(t *testing.T, open opener[stemdriver.ControlTransport], ns string) {
	ctx := testContext(t)
	ids := []string{"w1", "w2", "w3"}
	c := open(t, ns)
	subs := make([]stemdriver.ControlSubscription, len(ids))
	for i, id := range ids {
		subs[i] = mustSubscribe(ctx, t, c, id)
	}
	mustPublishControl(ctx, t, c, []string{stemtype.BroadcastTarget, stemtype.BroadcastTarget}, "all")
	mustPublishControl(ctx, t, c, []string{"w2"}, "to-w2")
	mustPublishControl(ctx, t, c, nil, "fence")
	want := [][]string{{"all"}, {"all", "to-w2"}, {"all"}}
	for i, sub := range subs {
		assertEqual(t, "messages to "+ids[i], recvUntil(ctx, t, sub, "fence"), want[i])
	}
}

func testControlTargetedReachesOnlyTargets(t *testing.T, open opener[stemdriver.ControlTransport], ns string) {
	ctx := testContext(t)
	ids := []string{"w1", "w2", "w3"}
	subs := make([]stemdriver.ControlSubscription, len(ids))
	for i, id := range ids {
		subs[i] = mustSubscribe(ctx, t, open(t, ns), id)
	}
	pub := open(t, ns)
	mustPublishControl(ctx, t, pub, []string{"w2"}, "to-w2")
	mustPublishControl(ctx, t, pub, []string{"w1", "w3"}, "to-w1-w3")
	mustPublishControl(ctx, t, pub, []string{"nobody"}, "to-nobody")
	mustPublishControl(ctx, t, pub, nil, "fence")
	want := [][]string{{"to-w1-w3"}, {"to-w2"}, {"to-w1-w3"}}
	for i, sub := range subs {
		assertEqual(t, "messages to "+ids[i], recvUntil(ctx, t, sub, "fence"), want[i])
	}
}

func testControlNamespacesIsolated(t *testing.T, open opener[stemdriver.ControlTransport], ns string) {
	ctx := testContext(t)
	ns2 := newNamespace(t)
	sub1 := mustSubscribe(ctx, t, open(t, ns), "w1")
	sub2 := mustSubscribe(ctx, t, open(t, ns2), "w1")
	pub1 := open(t, ns)
	mustPublishControl(ctx, t, pub1, nil, "ns1-broadcast")
	mustPublishControl(ctx, t, pub1, []string{"w1"}, "ns1-targeted")
	mustPublishControl(ctx, t, pub1, nil, "fence")
	assertEqual(t, "messages in the first namespace", recvUntil(ctx, t, sub1, "fence"), []string{"ns1-broadcast", "ns1-targeted"})
	// Everything of the first namespace was published before this.
	mustPublishControl(ctx, t, open(t, ns2), nil, "fence")
	if got := recvUntil(ctx, t, sub2, "fence"); len(got) != 0 {
		t.Fatalf("the second namespace received %q from the first", got)
	}
}

func testControlOpaqueBytesDeliveredUnchanged(t *testing.T, open opener[stemdriver.ControlTransport], ns string) {
	ctx := testContext(t)
	sub := mustSubscribe(ctx, t, open(t, ns), "w1")
	pub := open(t, ns)
	malformed := []byte{0xff, 0xfe, '{', '"', 't', 'y', 0x00, '\n', '}', '}'}
	msg := slices.Clone(malformed)
	if err := pub.Publish(ctx, []string{"w1"}, msg); err != nil {
		t.Fatalf("Publish of malformed bytes: %v", err)
	}
	msg[0] = 'X' // the caller may reuse its buffer after Publish
	mustBytes(t, "malformed message", recv(ctx, t, sub), malformed)
}

func testControlLateCollectorGetsStoredReplies(t *testing.T, open opener[stemdriver.ControlTransport], ns string) {
	ctx := testContext(t)
	worker, collector := open(t, ns), open(t, ns)
	mustReply(ctx, t, worker, "req-1", "r1")
	mustReply(ctx, t, worker, "req-1", "r2")
	trigger := make(chan struct{})
	replied := make(chan error, 1)
	go func() {
		select {
		case <-trigger:
			replied <- worker.Reply(ctx, "req-1", []byte("r3"))
		case <-ctx.Done():
			replied <- ctx.Err()
		}
	}()
	var got []string
	err := collector.Replies(ctx, "req-1", func(msg []byte) bool {
		got = append(got, string(msg))
		if len(got) == 2 {
			close(trigger) // r3 is stored while Replies runs
		}
		return len(got) < 3
	})
	if err != nil {
		t.Fatalf("Replies: %v (collected %q)", err, got)
	}
	if err := <-replied; err != nil {
		t.Fatalf("Reply r3: %v", err)
	}
	assertEqual(t, "collected replies", got, []string{"r1", "r2", "r3"})
}

func testControlRepliesStopsWhenFnReturnsFalse(t *testing.T, open opener[stemdriver.ControlTransport], ns string) {
	ctx := testContext(t)
	c := open(t, ns)
	for _, r := range []string{"r1", "r2", "r3"} {
		mustReply(ctx, t, c, "req-1", r)
	}
	var got []string
	if err := c.Replies(ctx, "req-1", func(msg []byte) bool {
		got = append(got, string(msg))
		return len(got) < 2
	}); err != nil {
		t.Fatalf("Replies: %v", err)
	}
	assertEqual(t, "replies before fn returned false", got, []string{"r1", "r2"})
	// Stopping consumed nothing: a second collector gets them all.
	assertEqual(t, "replies of a second collector", collectN(ctx, t, open(t, ns), "req-1", 3), []string{"r1", "r2", "r3"})
}

func testControlRepliesEndsWithContext(t *testing.T, open opener[stemdriver.ControlTransport], ns string) {
	ctx := testContext(t)
	c := open(t, ns)
	mustReply(ctx, t, c, "req-1", "r1")
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	calls := 0
	err := c.Replies(cctx, "req-1", func([]byte) bool {
		calls++
		cancel()
		return true
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Replies after cancel = %v, want an error matching context.Canceled", err)
	}
	if calls != 1 {
		t.Fatalf("fn called %d times, want 1", calls)
	}
}

func testControlRepliesIsolatedByRequestAndNamespace(t *testing.T, open opener[stemdriver.ControlTransport], ns string) {
	ctx := testContext(t)
	ns2 := newNamespace(t)
	c1, c2 := open(t, ns), open(t, ns2)
	mustReply(ctx, t, c1, "req-a", "a")
	mustReply(ctx, t, c1, "req-b", "b")
	mustReply(ctx, t, c2, "req-a", "other-namespace")
	assertEqual(t, "replies to req-b", collectN(ctx, t, open(t, ns), "req-b", 1), []string{"b"})
	assertEqual(t, "replies to req-a", collectN(ctx, t, open(t, ns), "req-a", 1), []string{"a"})
	assertEqual(t, "replies to req-a in another namespace", collectN(ctx, t, open(t, ns2), "req-a", 1), []string{"other-namespace"})
}

func testControlPresenceAnnounceWithdrawExpire(t *testing.T, open opener[stemdriver.ControlTransport], ns string) {
	ctx := testContext(t)
	a, b := open(t, ns), open(t, ns)
	const short = time.Second
	w1, w2, w3 := workerInfo(ns, "w1"), workerInfo(ns, "w2"), workerInfo(ns, "w3")
	mustAnnounce(ctx, t, a, w3, short)
	mustAnnounce(ctx, t, a, w1, time.Minute)
	mustAnnounce(ctx, t, a, w2, short)
	// Announcing again refreshes the ttl and replaces the info.
	w3.Concurrency = 32
	w3.LastSeen = now()
	mustAnnounce(ctx, t, a, w3, time.Minute)
	assertEqual(t, "workers listed from another connection", mustWorkers(ctx, t, b), normWorkers(w1, w2, w3))
	if got := mustWorkers(ctx, t, open(t, newNamespace(t))); len(got) != 0 {
		t.Fatalf("another namespace lists %d workers", len(got))
	}

	if err := b.Withdraw(ctx, "w1", w1.Instance); err != nil {
		t.Fatalf("Withdraw: %v", err)
	}
	if err := b.Withdraw(ctx, "never-announced", "i-1"); err != nil {
		t.Fatalf("Withdraw of an unknown worker: %v", err)
	}
	// w2's short ttl passes; there is no event to wait for, so poll.
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for {
		got := mustWorkers(ctx, t, b)
		if slices.ContainsFunc(got, func(w stemtype.WorkerInfo) bool { return w.ID == "w1" }) {
			t.Fatal("w1 is listed after Withdraw")
		}
		if !slices.ContainsFunc(got, func(w stemtype.WorkerInfo) bool { return w.ID == "w2" }) {
			// w3 was first announced before w2 with the same short
			// ttl: only the second Announce keeps it listed now.
			assertEqual(t, "workers after w2's ttl passed", got, normWorkers(w3))
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("w2 still listed %v after its %v ttl", guard, short)
		case <-poll.C:
		}
	}
}

func testControlAnnounceRefusesLiveIDOfAnotherInstance(t *testing.T, open opener[stemdriver.ControlTransport], ns string) {
	ctx := testContext(t)
	a, b := open(t, ns), open(t, ns)
	first := workerInfo(ns, "dup")
	first.Instance = "first"
	mustAnnounce(ctx, t, a, first, time.Minute)
	second := workerInfo(ns, "dup")
	second.Instance, second.Host, second.PID = "second", "other-host", 99
	err := b.Announce(ctx, second, time.Minute)
	if !errors.Is(err, stemdriver.ErrWorkerIDTaken) {
		t.Fatalf("Announce of a live id by another instance = %v, want ErrWorkerIDTaken", err)
	}
	var taken *stemdriver.WorkerIDTakenError
	if !errors.As(err, &taken) {
		t.Fatalf("Announce error %v (%T) is not a *WorkerIDTakenError", err, err)
	}
	assertEqual(t, "live worker named by the refusal", normWorkers(taken.Live), normWorkers(first))
	// The refusal changed nothing.
	assertEqual(t, "workers after the refusal", mustWorkers(ctx, t, b), normWorkers(first))
	// The holder announces again (from another connection too): its
	// info is replaced.
	first.Concurrency, first.LastSeen = 3, now()
	mustAnnounce(ctx, t, b, first, time.Minute)
	assertEqual(t, "workers after the holder announced again", mustWorkers(ctx, t, a), normWorkers(first))
	// Other ids are not affected.
	other := workerInfo(ns, "other")
	other.Instance = "second"
	mustAnnounce(ctx, t, b, other, time.Minute)
	assertEqual(t, "workers with another id", mustWorkers(ctx, t, a), normWorkers(first, other))
}

func testControlWithdrawOfAnotherInstanceLeavesEntry(t *testing.T, open opener[stemdriver.ControlTransport], ns string) {
	ctx := testContext(t)
	a, b := open(t, ns), open(t, ns)
	first := workerInfo(ns, "dup")
	first.Instance = "first"
	mustAnnounce(ctx, t, a, first, time.Minute)
	if err := b.Withdraw(ctx, "dup", "second"); err != nil {
		t.Fatalf("Withdraw by another instance: %v", err)
	}
	assertEqual(t, "workers after another instance withdrew", mustWorkers(ctx, t, a), normWorkers(first))
	if err := b.Withdraw(ctx, "dup", "first"); err != nil {
		t.Fatalf("Withdraw by the holder: %v", err)
	}
	if got := mustWorkers(ctx, t, a); len(got) != 0 {
		t.Fatalf("workers after the holder withdrew: %v", got)
	}
	// The id is free at once.
	second := workerInfo(ns, "dup")
	second.Instance = "second"
	mustAnnounce(ctx, t, b, second, time.Minute)
	assertEqual(t, "workers after the id was taken again", mustWorkers(ctx, t, a), normWorkers(second))
}

func testControlExpiryFreesWorkerID(t *testing.T, open opener[stemdriver.ControlTransport], ns string) {
	ctx := testContext(t)
	a, b := open(t, ns), open(t, ns)
	const short = 300 * time.Millisecond
	dead := workerInfo(ns, "dup")
	dead.Instance = "killed"
	mustAnnounce(ctx, t, a, dead, short)
	// The announcing worker dies without withdrawing: once Workers no
	// longer lists it (there is no event to wait for, so poll), its id
	// is free for another instance.
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for len(mustWorkers(ctx, t, b)) != 0 {
		select {
		case <-ctx.Done():
			t.Fatalf("dup still listed %v after its %v ttl", guard, short)
		case <-poll.C:
		}
	}
	next := workerInfo(ns, "dup")
	next.Instance = "restarted"
	mustAnnounce(ctx, t, b, next, time.Minute)
	assertEqual(t, "workers after the restart", mustWorkers(ctx, t, a), normWorkers(next))
}

func testControlSubscriptionCloseClosesC(t *testing.T, open opener[stemdriver.ControlTransport], ns string) {
	ctx := testContext(t)
	c := open(t, ns)
	sub := mustSubscribe(ctx, t, c, "w1")
	keep := mustSubscribe(ctx, t, c, "w2")
	if err := sub.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	_ = sub.Close() // safe to call more than once; its error is not specified
	for {
		select {
		case _, ok := <-sub.C():
			if !ok {
				// Publishing to a closed subscription's worker is fine,
				// and other subscriptions keep working.
				mustPublishControl(ctx, t, c, nil, "after-close")
				mustBytes(t, "message to the open subscription", recv(ctx, t, keep), []byte("after-close"))
				return
			}
		case <-ctx.Done():
			t.Fatalf("C not closed %v after Close", guard)
		}
	}
}

func testControlClosedReturnsErrClosed(t *testing.T, open opener[stemdriver.ControlTransport], ns string) {
	ctx := testContext(t)
	c := open(t, ns)
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Publish(ctx, nil, []byte("x")); !errors.Is(err, stemdriver.ErrClosed) {
		t.Errorf("Publish after Close = %v, want ErrClosed", err)
	}
	if err := c.Reply(ctx, "req-1", []byte("x")); !errors.Is(err, stemdriver.ErrClosed) {
		t.Errorf("Reply after Close = %v, want ErrClosed", err)
	}
	if _, err := c.Workers(ctx); !errors.Is(err, stemdriver.ErrClosed) {
		t.Errorf("Workers after Close = %v, want ErrClosed", err)
	}
}
func mustSubscribe(ctx context.Context, t *testing.T, c stemdriver.ControlTransport, workerID string) stemdriver.ControlSubscription {
	t.Helper()
	sub, err := c.Subscribe(ctx, workerID)
	if err != nil {
		t.Fatalf("Subscribe %s: %v", workerID, err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	return sub
}

func mustPublishControl(ctx context.Context, t *testing.T, c stemdriver.ControlTransport, targets []string, msg string) {
	t.Helper()
	if err := c.Publish(ctx, targets, []byte(msg)); err != nil {
		t.Fatalf("Publish %q to %v: %v", msg, targets, err)
	}
}

// recv returns the next message of sub.
func recv(ctx context.Context, t *testing.T, sub stemdriver.ControlSubscription) []byte {
	t.Helper()
	select {
	case msg, ok := <-sub.C():
		if !ok {
			t.Fatal("subscription closed while a message was expected")
		}
		return msg
	case <-ctx.Done():
		t.Fatalf("no message within %v", guard)
	}
	return nil
}

// recvUntil returns the messages of sub that arrive before fence.
func recvUntil(ctx context.Context, t *testing.T, sub stemdriver.ControlSubscription, fence string) []string {
	t.Helper()
	var got []string
	for {
		msg := string(recv(ctx, t, sub))
		if msg == fence {
			return emptyNilSlice(got)
		}
		got = append(got, msg)
	}
}

func mustReply(ctx context.Context, t *testing.T, c stemdriver.ControlTransport, requestID, msg string) {
	t.Helper()
	if err := c.Reply(ctx, requestID, []byte(msg)); err != nil {
		t.Fatalf("Reply %q to %s: %v", msg, requestID, err)
	}
}

// collectN returns the first n replies to requestID.
func collectN(ctx context.Context, t *testing.T, c stemdriver.ControlTransport, requestID string, n int) []string {
	t.Helper()
	var got []string
	err := c.Replies(ctx, requestID, func(msg []byte) bool {
		got = append(got, string(msg))
		return len(got) < n
	})
	if err != nil {
		t.Fatalf("Replies to %s: %v (collected %q of %d)", requestID, err, got, n)
	}
	return got
}

func mustAnnounce(ctx context.Context, t *testing.T, c stemdriver.ControlTransport, info stemtype.WorkerInfo, ttl time.Duration) {
	t.Helper()
	if err := c.Announce(ctx, info, ttl); err != nil {
		t.Fatalf("Announce %s: %v", info.ID, err)
	}
}

func mustWorkers(ctx context.Context, t *testing.T, c stemdriver.ControlTransport) []stemtype.WorkerInfo {
	t.Helper()
	ws, err := c.Workers(ctx)
	if err != nil {
		t.Fatalf("Workers: %v", err)
	}
	return normWorkers(ws...)
}

// workerInfo returns a worker info with every field set.
func workerInfo(ns, id string) stemtype.WorkerInfo {
	at := now()
	return stemtype.WorkerInfo{
		ID:          id,
		Namespace:   ns,
		Host:        "host-" + id,
		PID:         4242,
		Queues:      []string{"default", "mail"},
		Concurrency: 8,
		StartedAt:   at.Add(-time.Minute),
		LastSeen:    at,
		Instance:    "instance-" + id,
	}
}

// normWorkers returns copies of ws with normalized times, sorted by id.
func normWorkers(ws ...stemtype.WorkerInfo) []stemtype.WorkerInfo {
	out := make([]stemtype.WorkerInfo, len(ws))
	for i, w := range ws {
		w.Queues = emptyNilSlice(slices.Clone(w.Queues))
		w.StartedAt = normTime(w.StartedAt)
		w.LastSeen = normTime(w.LastSeen)
		out[i] = w
	}
	slices.SortFunc(out, func(a, b stemtype.WorkerInfo) int { return cmp.Compare(a.ID, b.ID) })
	return emptyNilSlice(out)
}
