package stempostgres_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stempostgres"
	"github.com/stem-go/stem/stemtype"
)

// A claim that committed but whose reply was lost (the connection cut
// after the commit: TestPostgresConnectionsTerminatedMidRun met it, 40
// tasks held by nobody until their lease ended) is replayed by the
// broker's next claim of the queue: it returns the same rows, with the
// lease renewed, instead of leasing new ones and stranding the first.
func TestClaimWhoseReplyWasLostIsReplayed(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := context.Background()
	opts := stemdriver.Options{Namespace: "replay", Logger: quiet()}
	b := opened[*stempostgres.Broker](t)(stempostgres.OpenBroker(ctx, u, opts))
	var envs []*stemtype.Envelope
	for _, id := range []string{"a", "b", "c", "d"} {
		envs = append(envs, &stemtype.Envelope{ID: id, Task: "t", Queue: "q", CreatedAt: time.Now()})
	}
	if err := b.Publish(ctx, envs...); err != nil {
		t.Fatal(err)
	}
	var lose atomic.Bool
	lose.Store(true)
	stempostgres.SetLoseReplyForTest(b, lose.Load)
	req := stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "w", Max: 2, Lease: time.Minute}
	if ds, err := b.Claim(ctx, req); err == nil || len(ds) != 0 {
		t.Fatalf("claim with its reply lost = %d deliveries, %v; want an error", len(ds), err)
	}
	lose.Store(false)
	ds, err := b.Claim(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	ids := func(ds []stemdriver.Delivery) []string {
		var out []string
		for _, d := range ds {
			out = append(out, d.Envelope.ID)
		}
		slices.Sort(out)
		return out
	}
	if got := ids(ds); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("claim after the lost reply = %v, want [a b], the lost claim's rows", got)
	}
	// They are this broker's to finish, and the rest is claimed as usual.
	if err := b.Ack(ctx, ds...); err != nil {
		t.Fatalf("ack of the replayed deliveries: %v", err)
	}
	ds, err = b.Claim(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(ds); !slices.Equal(got, []string{"c", "d"}) {
		t.Fatalf("next claim = %v, want [c d]", got)
	}
	if n, err := b.Depth(ctx, "q"); err != nil || n != 0 {
		t.Fatalf("depth = %d, %v; want 0, every row held or done", n, err)
	}
}

// A lost claim whose rows another consumer took after their lease ended
// replays nothing: a row is never delivered twice at once.
func TestLostClaimReplayYieldsToReclaim(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := context.Background()
	opts := stemdriver.Options{Namespace: "replay2", Logger: quiet()}
	b := opened[*stempostgres.Broker](t)(stempostgres.OpenBroker(ctx, u, opts))
	other := opened[*stempostgres.Broker](t)(stempostgres.OpenBroker(ctx, u, opts))
	if err := b.Publish(ctx, &stemtype.Envelope{ID: "a", Task: "t", Queue: "q", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	var lose atomic.Bool
	lose.Store(true)
	stempostgres.SetLoseReplyForTest(b, lose.Load)
	short := stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "w", Max: 1, Lease: time.Millisecond}
	if _, err := b.Claim(ctx, short); err == nil {
		t.Fatal("claim with its reply lost: no error")
	}
	lose.Store(false)
	// The other consumer waits for the lease to end and takes the row.
	ds, err := other.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "o", Max: 1, Lease: time.Minute, Wait: 10 * time.Second})
	if err != nil || len(ds) != 1 || !ds[0].Redelivered {
		t.Fatalf("other's claim = %+v, %v; want the row, redelivered", ds, err)
	}
	mine, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "w", Max: 1, Lease: time.Minute})
	if err != nil || len(mine) != 0 {
		t.Fatalf("replay after another took the row = %d deliveries, %v; want none", len(mine), err)
	}
	if err := other.Ack(ctx, ds...); err != nil {
		t.Fatalf("the other's ack: %v", err)
	}
}
