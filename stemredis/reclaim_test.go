package stemredis

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stem-go/stem/stemdriver"
)

// waitExpired polls Depth of queue until it counts want messages (a lease
// that expired counts as ready): there is no event to wait on for a lease
// ending that would not re-claim the message.
func waitExpired(ctx context.Context, t *testing.T, b *Broker, queue string, want int64) {
	t.Helper()
	for {
		n, err := b.Depth(ctx, queue)
		if err != nil {
			t.Fatalf("Depth: %v", err)
		}
		if n == want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("Depth of %s still %d, want %d: %v", queue, n, want, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestExpiredLeaseBeyondTheBatchStaysWithItsHolder: a claim takes the
// expired leases it has room for; the others keep their place (and their
// holder, whose Ack still succeeds since nobody else got them) until the
// next claim, which takes them before any new message.
func TestExpiredLeaseBeyondTheBatchStaysWithItsHolder(t *testing.T) {
	t.Parallel()
	ns := newNS(t)
	dead, live := openTestBroker(t, ns), openTestBroker(t, ns)
	ctx := testCtx(t)
	if err := dead.Publish(ctx, testEnvelopes("held", "q", 3)...); err != nil {
		t.Fatal(err)
	}
	lost, err := dead.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "dead", Max: 3, Lease: 100 * time.Millisecond})
	if err != nil || len(lost) != 3 {
		t.Fatalf("Claim of 3: %d, %v", len(lost), err)
	}
	waitExpired(ctx, t, dead, "q", 3)
	if err := dead.Publish(ctx, testEnvelopes("new", "q", 1)...); err != nil {
		t.Fatal(err)
	}

	req := stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "live", Max: 1, Lease: time.Minute}
	first, err := live.Claim(ctx, req)
	if err != nil || len(first) != 1 {
		t.Fatalf("Claim of 1: %d, %v", len(first), err)
	}
	if !first[0].Redelivered || first[0].Envelope.ID[:4] != "held" {
		t.Fatalf("first claim after the leases expired: %s (redelivered %v), want one of held-0..2, redelivered",
			first[0].Envelope.ID, first[0].Redelivered)
	}
	var kept stemdriver.Delivery
	for _, d := range lost {
		switch {
		case d.Envelope.ID == first[0].Envelope.ID:
			if err := dead.Ack(ctx, d); !errors.Is(err, stemdriver.ErrLeaseLost) {
				t.Errorf("old holder's Ack of the re-claimed %s = %v, want ErrLeaseLost", d.Envelope.ID, err)
			}
		case kept.Envelope == nil:
			// Expired but taken by nobody: the holder may still finish it.
			if err := dead.Ack(ctx, d); err != nil {
				t.Errorf("old holder's Ack of %s, expired and not re-claimed: %v", d.Envelope.ID, err)
			}
			kept = d
		}
	}
	second, err := live.Claim(ctx, req)
	if err != nil || len(second) != 1 {
		t.Fatalf("second Claim of 1: %d, %v", len(second), err)
	}
	if id := second[0].Envelope.ID; id == first[0].Envelope.ID || id == kept.Envelope.ID || id[:4] != "held" || !second[0].Redelivered {
		t.Fatalf("second claim: %s (redelivered %v), want the third held message, redelivered", id, second[0].Redelivered)
	}
	third, err := live.Claim(ctx, req)
	if err != nil || len(third) != 1 || third[0].Envelope.ID != "new-0" || third[0].Redelivered {
		t.Fatalf("third claim: %v, %v; want new-0, a first delivery", ids(third), err)
	}
	if err := live.Ack(ctx, append(append(first, second...), third...)...); err != nil {
		t.Fatal(err)
	}
	if n, err := live.Depth(ctx, "q"); err != nil || n != 0 {
		t.Fatalf("Depth at the end: %d, %v; want 0", n, err)
	}
}

// TestExpiredLeasesOfDeletedEntriesAreDropped: an expired lease whose
// stream entry is gone (deleted by hand) is forgotten, not delivered, and
// one claim looks at no more than 1000 expired leases, so that a pile of
// them never makes a claim slow; the claim still leases what is ready.
func TestExpiredLeasesOfDeletedEntriesAreDropped(t *testing.T) {
	t.Parallel()
	ns := newNS(t)
	b := openTestBroker(t, ns)
	ctx := testCtx(t)
	k := newQueueKeys(ns, "q")
	const gone = 1001
	zs := make([]redis.Z, gone)
	for i := range zs {
		zs[i] = redis.Z{Score: 1, Member: fmt.Sprintf("1-%d", i+1)} // expired in 1970
	}
	rdb := rawClient(t)
	if err := rdb.ZAdd(ctx, k.leases, zs...).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, testEnvelopes("x", "q", 2)...); err != nil {
		t.Fatal(err)
	}
	req := stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 1, Lease: time.Minute}
	for i, want := range []string{"x-0", "x-1"} {
		ds, err := b.Claim(ctx, req)
		if err != nil || len(ds) != 1 || ds[0].Envelope.ID != want || ds[0].Redelivered {
			t.Fatalf("claim %d: %v, %v; want %s, a first delivery", i+1, ids(ds), err, want)
		}
		// The first claim dropped 1000 of the leases of deleted entries,
		// the second the last one.
		wantLeases := []int64{gone - 1000 + 1, 2}[i]
		if n, err := rdb.ZCard(ctx, k.leases).Result(); err != nil || n != wantLeases {
			t.Fatalf("leases after claim %d: %d, %v; want %d", i+1, n, err, wantLeases)
		}
	}
}

// TestReclaimedMessagesAreHeldOnceUnderConcurrentClaims: four consumers
// claim at once from a queue whose first 20 messages a dead consumer held
// (their leases expired) and 20 more are new; every message is delivered
// once, the 20 re-claimed ones marked redelivered, although each
// re-claimed message got a new stream entry beyond the group's read
// position that the claims reach while its new holder still holds it.
func TestReclaimedMessagesAreHeldOnceUnderConcurrentClaims(t *testing.T) {
	t.Parallel()
	ns := newNS(t)
	dead := openTestBroker(t, ns)
	ctx := testCtx(t)
	const held, fresh, claimers = 20, 20, 4
	if err := dead.Publish(ctx, testEnvelopes("held", "q", held)...); err != nil {
		t.Fatal(err)
	}
	if got := claimAll(ctx, t, dead, held, 100*time.Millisecond, "q"); len(got) != held {
		t.Fatalf("dead consumer claimed %d, want %d", len(got), held)
	}
	waitExpired(ctx, t, dead, "q", held)
	if err := dead.Publish(ctx, testEnvelopes("fresh", "q", fresh)...); err != nil {
		t.Fatal(err)
	}

	var (
		mu    sync.Mutex
		seen  = map[string]int{}
		redel = map[string]bool{}
		total atomic.Int32
		wg    sync.WaitGroup
	)
	for i := range claimers {
		b := openTestBroker(t, ns)
		wg.Go(func() {
			req := stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: fmt.Sprintf("c%d", i), Max: 3, Lease: time.Minute}
			for total.Load() < held+fresh && ctx.Err() == nil {
				ds, err := b.Claim(ctx, req)
				if err != nil {
					t.Errorf("Claim: %v", err)
					return
				}
				mu.Lock()
				for _, d := range ds {
					seen[d.Envelope.ID]++
					redel[d.Envelope.ID] = d.Redelivered
				}
				mu.Unlock()
				total.Add(int32(len(ds)))
			}
		})
	}
	wg.Wait()
	if len(seen) != held+fresh || int(total.Load()) != held+fresh {
		t.Fatalf("claimed %d deliveries of %d messages, want %d of %d", total.Load(), len(seen), held+fresh, held+fresh)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s delivered %d times", id, n)
		}
		if want := strings.HasPrefix(id, "held"); redel[id] != want {
			t.Errorf("%s: Redelivered = %v, want %v", id, redel[id], want)
		}
	}
	ds, err := openTestBroker(t, ns).Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "late", Max: 10, Lease: time.Minute})
	if err != nil || len(ds) != 0 {
		t.Fatalf("claim after all were claimed: %v, %v; want nothing", ids(ds), err)
	}
}
