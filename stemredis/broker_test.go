package stemredis

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/stem-go/stem/internal/testutil"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

func testEnvelopes(prefix, queue string, n int) []*stemtype.Envelope {
	out := make([]*stemtype.Envelope, n)
	for i := range out {
		out[i] = &stemtype.Envelope{
			ID:        fmt.Sprintf("%s-%d", prefix, i),
			Task:      "test.noop",
			Args:      json.RawMessage(`{}`),
			Queue:     queue,
			CreatedAt: time.Now().UTC(),
		}
	}
	return out
}

// claimAll claims from queue until it holds n messages.
func claimAll(ctx context.Context, t *testing.T, b *Broker, n int, lease time.Duration, queue string) []stemdriver.Delivery {
	t.Helper()
	var got []stemdriver.Delivery
	for len(got) < n {
		ds, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{queue}, Consumer: "test", Max: n - len(got), Lease: lease, Wait: 200 * time.Millisecond})
		if err != nil {
			t.Fatalf("Claim: %v", err)
		}
		if len(got)+len(ds) > n {
			t.Fatalf("claimed %d messages, want %d", len(got)+len(ds), n)
		}
		got = append(got, ds...)
	}
	return got
}

func TestKeysShareQueueHashTag(t *testing.T) {
	k := newQueueKeys("ns", "q")
	for _, key := range []string{k.stream, k.leases, k.delayed, k.dead} {
		if tag := hashTag(key); tag != "ns:q" {
			t.Errorf("key %s has hash tag %q, want ns:q", key, tag)
		}
	}
	rk := newRevokeKeys("ns")
	pk := newPresenceKeys("ns")
	for _, key := range []string{rk.records, rk.expiry, rk.changes, rk.seq, rk.tombs, rk.tombExpiry, pk.live, pk.worker("w{1}:x")} {
		if tag := hashTag(key); tag != "ns" {
			t.Errorf("key %s has hash tag %q, want ns", key, tag)
		}
	}
}

func TestKeysEscapeNames(t *testing.T) {
	// Names with separators and braces neither collide nor break the tag.
	a := newQueueKeys("a:b", "c")
	b := newQueueKeys("a", "b:c")
	if a.stream == b.stream {
		t.Fatalf("namespace a:b queue c and namespace a queue b:c share key %s", a.stream)
	}
	c := newQueueKeys("n}s", "{q")
	if tag := hashTag(c.stream); tag != "n%7Ds:%7Bq" {
		t.Fatalf("key %s has hash tag %q, want the escaped names", c.stream, tag)
	}
	if newRevokeKeys("x}").records == newRevokeKeys("x").records {
		t.Fatal("namespaces x} and x share the revoke key")
	}
}

// hashTag returns what Redis Cluster hashes of key: the text between the
// first '{' and the next '}', when not empty.
func hashTag(key string) string {
	i := strings.IndexByte(key, '{')
	if i < 0 {
		return key
	}
	j := strings.IndexByte(key[i+1:], '}')
	if j <= 0 {
		return key
	}
	return key[i+1 : i+1+j]
}

func TestPublishLargeBatchAndClaimBeyondScriptChunks(t *testing.T) {
	ns := newNS(t)
	b := openTestBroker(t, ns)
	ctx := testCtx(t)
	const n = 2500 // more than one publish pipeline, ack chunk and ZADD chunk
	if err := b.Publish(ctx, testEnvelopes("big", "q", n)...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if d, err := b.Depth(ctx, "q"); err != nil || d != n {
		t.Fatalf("Depth = %d, %v; want %d", d, err, n)
	}
	ds, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: n, Lease: time.Minute})
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	if len(ds) != n {
		t.Fatalf("Claim with Max %d returned %d", n, len(ds))
	}
	seen := map[string]bool{}
	for _, d := range ds {
		if d.Envelope == nil {
			t.Fatalf("delivery %s: %v", d.Receipt, d.DecodeErr)
		}
		seen[d.Envelope.ID] = true
	}
	if len(seen) != n {
		t.Fatalf("%d distinct envelopes, want %d", len(seen), n)
	}
	rdb := rawClient(t)
	k := newQueueKeys(ns, "q")
	if c, err := rdb.ZCard(ctx, k.leases).Result(); err != nil || c != n {
		t.Fatalf("%d leases recorded (%v), want %d", c, err, n)
	}
	if err := b.Ack(ctx, ds...); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	for _, key := range []string{k.stream, k.leases} {
		var size int64
		if key == k.stream {
			size, err = rdb.XLen(ctx, key).Result()
		} else {
			size, err = rdb.ZCard(ctx, key).Result()
		}
		if err != nil || size != 0 {
			t.Fatalf("%s holds %d entries after Ack (%v), want 0", key, size, err)
		}
	}
	pending, err := rdb.XPending(ctx, k.stream, group).Result()
	if err != nil || pending.Count != 0 {
		t.Fatalf("group has %v pending entries after Ack (%v), want 0", pending, err)
	}
}

func TestUndecodableEntriesAreDeliveredAndDeadLettered(t *testing.T) {
	ns := newNS(t)
	b := openTestBroker(t, ns)
	ctx := testCtx(t)
	rdb := rawClient(t)
	k := newQueueKeys(ns, "q")
	if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: k.stream, Values: []any{msgField, "not json"}}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: k.stream, Values: []any{"other", "x"}}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: k.stream, Values: []any{msgField, `{"id":"","task":"t","queue":"q"}`}}).Err(); err != nil {
		t.Fatal(err)
	}
	ds := claimAll(ctx, t, b, 3, time.Minute, "q")
	wantRaw := []string{"not json", `["other","x"]`, `{"id":"","task":"t","queue":"q"}`}
	for i, d := range ds {
		if d.Envelope != nil || d.DecodeErr == nil {
			t.Fatalf("delivery %d: envelope %v, DecodeErr %v; want no envelope and an error", i, d.Envelope, d.DecodeErr)
		}
		if string(d.Raw) != wantRaw[i] {
			t.Errorf("delivery %d: Raw %q, want %q", i, d.Raw, wantRaw[i])
		}
		if err := b.DeadLetter(ctx, d, fmt.Sprintf("reason %d", i)); err != nil {
			t.Fatalf("DeadLetter: %v", err)
		}
	}
	if n, err := rdb.XLen(ctx, k.stream).Result(); err != nil || n != 0 {
		t.Fatalf("stream holds %d entries after DeadLetter (%v)", n, err)
	}
	dead, err := rdb.XRange(ctx, k.dead, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 3 {
		t.Fatalf("dead-letter stream holds %d entries, want 3", len(dead))
	}
	for i, e := range dead {
		if e.Values["msg"] != wantRaw[i] || e.Values["reason"] != fmt.Sprintf("reason %d", i) || e.Values["queue"] != "q" || e.Values["stream_id"] != ds[i].Receipt {
			t.Errorf("dead letter %d = %v", i, e.Values)
		}
	}
	if err := b.DeadLetter(ctx, ds[0], "again"); !errors.Is(err, stemdriver.ErrLeaseLost) {
		t.Fatalf("second DeadLetter = %v, want ErrLeaseLost", err)
	}
}

func TestDoubleAckIsLeaseLost(t *testing.T) {
	ns := newNS(t)
	b := openTestBroker(t, ns)
	ctx := testCtx(t)
	if err := b.Publish(ctx, testEnvelopes("a", "q", 2)...); err != nil {
		t.Fatal(err)
	}
	ds := claimAll(ctx, t, b, 2, time.Minute, "q")
	if err := b.Ack(ctx, ds[0]); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	// The second Ack still finishes the held delivery and reports the other.
	err := b.Ack(ctx, ds[0], ds[1])
	if !errors.Is(err, stemdriver.ErrLeaseLost) {
		t.Fatalf("Ack of an acked and a held delivery = %v, want ErrLeaseLost", err)
	}
	if err := b.ExtendLease(ctx, ds[1], time.Minute); !errors.Is(err, stemdriver.ErrLeaseLost) {
		t.Fatalf("ExtendLease after Ack = %v, want ErrLeaseLost (the held one was acked too)", err)
	}
}

func TestRetryToAnotherQueue(t *testing.T) {
	ns := newNS(t)
	b := openTestBroker(t, ns)
	ctx := testCtx(t)
	if err := b.Publish(ctx, testEnvelopes("x", "q1", 1)...); err != nil {
		t.Fatal(err)
	}
	d := claimAll(ctx, t, b, 1, time.Minute, "q1")[0]
	next := *d.Envelope
	next.Queue, next.Attempt = "q2", 1
	if err := b.Retry(ctx, d, &next); err != nil {
		t.Fatalf("Retry: %v", err)
	}
	if err := b.Retry(ctx, d, &next); !errors.Is(err, stemdriver.ErrLeaseLost) {
		t.Fatalf("second Retry = %v, want ErrLeaseLost", err)
	}
	if n, err := b.Depth(ctx, "q1"); err != nil || n != 0 {
		t.Fatalf("Depth q1 = %d, %v; want 0", n, err)
	}
	got := claimAll(ctx, t, b, 1, time.Minute, "q2")[0]
	if got.Envelope.ID != next.ID || got.Envelope.Attempt != 1 || got.Queue != "q2" {
		t.Fatalf("claimed %+v from q2, want attempt 1 of %s", got.Envelope, next.ID)
	}
}

// waitBlocked waits until the broker's or transport's blocker has a command
// blocked on the server, and returns that connection's client id.
func waitBlocked(ctx context.Context, t *testing.T, blk *blocker) int64 {
	t.Helper()
	rdb := rawClient(t)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		blk.mu.Lock()
		var ids []int64
		for bc := range blk.active {
			ids = append(ids, bc.id)
		}
		blk.mu.Unlock()
		for _, id := range ids {
			info, err := rdb.Do(ctx, "client", "list", "id", id).Text()
			if err != nil {
				t.Fatalf("CLIENT LIST: %v", err)
			}
			if strings.Contains(info, " flags=b ") || strings.Contains(info, "cmd=xread") && strings.Contains(info, "flags=b") {
				return id
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no command got blocked on the server: %v", ctx.Err())
		case <-tick.C:
		}
	}
}

func TestCancelledClaimUnblocksAndReusesConnection(t *testing.T) {
	ns := newNS(t)
	b := openTestBroker(t, ns)
	b.maxBlock = time.Hour // only CLIENT UNBLOCK can end the wait early
	ctx := testCtx(t)

	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := b.Claim(cctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 1, Lease: time.Minute, Wait: time.Hour})
		done <- err
	}()
	id := waitBlocked(ctx, t, b.blk)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Claim = %v, want context.Canceled", err)
	}

	// The dedicated connection went back to the blocker, healthy, and the
	// next blocking Claim uses it and is woken by a publish.
	b.blk.mu.Lock()
	idle := len(b.blk.idle)
	b.blk.mu.Unlock()
	if idle != 1 {
		t.Fatalf("%d idle blocking connections after the cancel, want 1", idle)
	}
	go func() {
		ds, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 1, Lease: time.Minute, Wait: time.Hour})
		if err == nil && len(ds) != 1 {
			err = fmt.Errorf("claimed %d messages, want 1", len(ds))
		}
		done <- err
	}()
	if again := waitBlocked(ctx, t, b.blk); again != id {
		t.Fatalf("second Claim blocked on client %d, want the reused client %d", again, id)
	}
	if err := b.Publish(ctx, testEnvelopes("wake", "q", 1)...); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Claim after a cancelled one: %v", err)
	}
}

func TestCloseEndsBlockedClaim(t *testing.T) {
	ns := newNS(t)
	b := openTestBroker(t, ns)
	b.maxBlock = time.Hour
	ctx := testCtx(t)
	done := make(chan error, 1)
	go func() {
		_, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 1, Lease: time.Minute, Wait: time.Hour})
		done <- err
	}()
	waitBlocked(ctx, t, b.blk)
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-done; !errors.Is(err, stemdriver.ErrClosed) {
		t.Fatalf("Claim blocked during Close = %v, want ErrClosed", err)
	}
}

func TestClaimWaitWakesForDueDelayedMessage(t *testing.T) {
	ns := newNS(t)
	b := openTestBroker(t, ns)
	ctx := testCtx(t)
	env := testEnvelopes("later", "q", 1)[0]
	env.NotBefore = time.Now().Add(300 * time.Millisecond)
	if err := b.Publish(ctx, env); err != nil {
		t.Fatal(err)
	}
	// One Claim call: nothing appends to the stream, so only the wait
	// bounded by the next due time can find the message.
	b.maxBlock = time.Hour
	ds, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 1, Lease: time.Minute, Wait: time.Minute})
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	if len(ds) != 1 || ds[0].Envelope.ID != env.ID {
		t.Fatalf("Claim returned %d messages, want %s", len(ds), env.ID)
	}
	if time.Now().Before(env.NotBefore) {
		t.Fatalf("claimed before NotBefore %v", env.NotBefore)
	}
}

// TestSIGKILLedConsumerLosesNothing runs a consumer in a child process that
// claims messages and kills itself with SIGKILL; its messages come back.
func TestSIGKILLedConsumerLosesNothing(t *testing.T) {
	if os.Getenv("STEM_REDIS_TEST_CHILD_NS") != "" {
		t.Skip("running as the child of TestSIGKILLedConsumerLosesNothing")
	}
	ns := newNS(t)
	b := openTestBroker(t, ns)
	ctx := testCtx(t)
	envs := testEnvelopes("kill", "q", 5)
	if err := b.Publish(ctx, envs...); err != nil {
		t.Fatal(err)
	}

	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestChildClaimsAndDies$", "-test.count=1")
	cmd.Env = append(os.Environ(), "STEM_REDIS_TEST_CHILD_NS="+ns, "STEM_TEST_REDIS_URL="+testutil.RedisURL())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var claimed []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if id, ok := strings.CutPrefix(sc.Text(), "claimed "); ok {
			claimed = append(claimed, id)
		}
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, want killed by SIGKILL", err)
	}
	if len(claimed) != 3 {
		t.Fatalf("child claimed %v, want 3 messages", claimed)
	}

	got := claimAll(ctx, t, b, 5, time.Minute, "q")
	var ids []string
	for _, d := range got {
		ids = append(ids, d.Envelope.ID)
	}
	slices.Sort(ids)
	want := []string{"kill-0", "kill-1", "kill-2", "kill-3", "kill-4"}
	if !slices.Equal(ids, want) {
		t.Fatalf("after the consumer died, claimed %v, want %v", ids, want)
	}
	if err := b.Ack(ctx, got...); err != nil {
		t.Fatalf("Ack: %v", err)
	}
}

// TestChildClaimsAndDies is the child process of
// TestSIGKILLedConsumerLosesNothing; it does nothing in a normal run.
func TestChildClaimsAndDies(t *testing.T) {
	ns := os.Getenv("STEM_REDIS_TEST_CHILD_NS")
	if ns == "" {
		t.Skip("only runs as a child of TestSIGKILLedConsumerLosesNothing")
	}
	b, err := OpenBroker(context.Background(), testutil.RedisURL(), stemdriver.Options{Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	ds, err := b.Claim(context.Background(), stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "doomed", Max: 3, Lease: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		fmt.Printf("claimed %s\n", d.Envelope.ID)
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL cannot be caught; this is never reached
}

func TestConsumerSweepDeletesIdleConsumers(t *testing.T) {
	ns := newNS(t)
	b := openTestBroker(t, ns)
	ctx := testCtx(t)
	rdb := rawClient(t)
	k := newQueueKeys(ns, "q")
	if err := b.Publish(ctx, testEnvelopes("s", "q", 1)...); err != nil {
		t.Fatal(err)
	}
	// "old" holds nothing; "busy" holds the message.
	if _, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "busy", Max: 1, Lease: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := rdb.XGroupCreateConsumer(ctx, k.stream, group, "old").Err(); err != nil {
		t.Fatal(err)
	}
	consumers := func() []string {
		t.Helper()
		cs, err := rdb.XInfoConsumers(ctx, k.stream, group).Result()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, c := range cs {
			names = append(names, c.Name)
		}
		return names
	}
	if names := consumers(); !slices.Contains(names, "old") {
		t.Fatalf("consumers before the sweep: %v, want old among them", names)
	}
	// Run the script with an idle limit of -1 ms, so every consumer that
	// holds nothing counts as idle.
	if err := claimScript.run(ctx, b.rdb, []string{k.stream, k.leases, k.delayed, k.claimKey("sweep")}, group, "sweeper", 1, 1000, "0", "1", -1, 1).Err(); err != nil {
		t.Fatal(err)
	}
	names := consumers()
	if slices.Contains(names, "old") || !slices.Contains(names, "busy") {
		t.Fatalf("consumers after the sweep: %v, want busy (holds a message) kept and old deleted", names)
	}
}

// errInjected is the failure scriptFault reports.
var errInjected = errors.New("stemredis test: injected failure")

// scriptFault is a go-redis hook that makes the next script call fail, as
// a broken connection would: before the command reaches the server
// (reached false) or after the server ran it and before its reply arrived
// (reached true).
type scriptFault struct {
	armed   atomic.Bool
	reached bool
}

func (f *scriptFault) DialHook(next redis.DialHook) redis.DialHook { return next }

func (f *scriptFault) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (f *scriptFault) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		name := cmd.Name()
		if (name != "evalsha" && name != "eval") || !f.armed.Load() {
			return next(ctx, cmd)
		}
		if f.reached {
			if err := next(ctx, cmd); isNoScript(err) {
				return err // it did not run; the EVAL that follows will
			}
		}
		f.armed.Store(false)
		cmd.SetErr(errInjected)
		return errInjected
	}
}

// TestRetryReplayedAfterAFailureStoresOneNext replays a Retry the way the
// worker's writer does after an error, for a failure before and after the
// server ran it: exactly one next message is stored either way. Before
// Retry was one script, a cross-queue Retry whose final ack failed
// published next again on every replay.
func TestRetryReplayedAfterAFailureStoresOneNext(t *testing.T) {
	for _, tc := range []struct {
		name    string
		queue   string
		reached bool
	}{
		{"OtherQueueFailedBeforeServer", "q2", false},
		{"OtherQueueReplyLost", "q2", true},
		{"SameQueueFailedBeforeServer", "q1", false},
		{"SameQueueReplyLost", "q1", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNS(t)
			b := openTestBroker(t, ns)
			fault := &scriptFault{reached: tc.reached}
			b.rdb.AddHook(fault)
			ctx := testCtx(t)
			if err := b.Publish(ctx, testEnvelopes("x", "q1", 1)...); err != nil {
				t.Fatal(err)
			}
			d := claimAll(ctx, t, b, 1, time.Minute, "q1")[0]
			next := *d.Envelope
			next.Queue, next.Attempt = tc.queue, 1

			fault.armed.Store(true)
			if err := b.Retry(ctx, d, &next); !errors.Is(err, errInjected) {
				t.Fatalf("Retry with a failing connection = %v, want the injected failure", err)
			}
			err := b.Retry(ctx, d, &next)
			if tc.reached && !errors.Is(err, stemdriver.ErrLeaseLost) {
				t.Fatalf("replayed Retry after it ran = %v, want ErrLeaseLost", err)
			}
			if !tc.reached && err != nil {
				t.Fatalf("replayed Retry after it failed unsent = %v, want nil", err)
			}
			if tc.queue != "q1" {
				if n, err := b.Depth(ctx, "q1"); err != nil || n != 0 {
					t.Fatalf("Depth q1 = %d, %v; want 0", n, err)
				}
			}
			if n, err := b.Depth(ctx, tc.queue); err != nil || n != 1 {
				t.Fatalf("Depth %s = %d, %v; want 1 (one next message)", tc.queue, n, err)
			}
		})
	}
}

// TestLostLeaseDeadLetterStoresNothing checks what the conformance suite
// cannot see: a DeadLetter of a delivery whose lease another consumer took
// over writes no dead letter.
func TestLostLeaseDeadLetterStoresNothing(t *testing.T) {
	ns := newNS(t)
	b := openTestBroker(t, ns)
	ctx := testCtx(t)
	if err := b.Publish(ctx, testEnvelopes("x", "q", 1)...); err != nil {
		t.Fatal(err)
	}
	old := claimAll(ctx, t, b, 1, 50*time.Millisecond, "q")[0]
	cur := claimAll(ctx, t, b, 1, time.Minute, "q")[0] // polls until the lease lapses
	if err := b.DeadLetter(ctx, old, "lost"); !errors.Is(err, stemdriver.ErrLeaseLost) {
		t.Fatalf("DeadLetter of a lost lease = %v, want ErrLeaseLost", err)
	}
	k := newQueueKeys(ns, "q")
	if n, err := rawClient(t).XLen(ctx, k.dead).Result(); err != nil || n != 0 {
		t.Fatalf("dead letters after a lost-lease DeadLetter: %d, %v; want 0", n, err)
	}
	if err := b.Ack(ctx, cur); err != nil {
		t.Fatalf("Ack by the current holder: %v", err)
	}
}

// TestDelayedMembersUniqueAndLegacyOnesDelivered checks the delayed set's
// layout: every publish is a member of its own, a token followed by the
// envelope JSON, and a member written before tokens existed (the bare
// JSON) is still delivered whole.
func TestDelayedMembersUniqueAndLegacyOnesDelivered(t *testing.T) {
	ns := newNS(t)
	b := openTestBroker(t, ns)
	ctx := testCtx(t)
	rdb := rawClient(t)
	k := newQueueKeys(ns, "q")
	env := testEnvelopes("d", "q", 1)[0]
	env.NotBefore = time.Now().Add(time.Hour)
	if err := b.Publish(ctx, env, env); err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	members, err := rdb.ZRange(ctx, k.delayed, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != 2 || members[0] == members[1] {
		t.Fatalf("delayed set holds %q, want two distinct members", members)
	}
	for _, m := range members {
		if len(m) != delayedTokenLen+len(raw) || m[delayedTokenLen:] != string(raw) || strings.Contains(m[:delayedTokenLen], "{") {
			t.Fatalf("delayed member %q, want a %d-character token and then %s", m, delayedTokenLen, raw)
		}
	}

	legacy := testEnvelopes("legacy", "q", 1)[0]
	lraw, err := json.Marshal(legacy)
	if err != nil {
		t.Fatal(err)
	}
	due := float64(time.Now().Add(-time.Second).UnixMicro())
	if err := rdb.ZAdd(ctx, k.delayed, redis.Z{Score: due, Member: lraw}).Err(); err != nil {
		t.Fatal(err)
	}
	d := claimAll(ctx, t, b, 1, time.Minute, "q")[0]
	if d.DecodeErr != nil || d.Envelope.ID != legacy.ID || string(d.Raw) != string(lraw) {
		t.Fatalf("claimed %q (decode error %v), want the legacy member %s whole", d.Raw, d.DecodeErr, lraw)
	}
}
