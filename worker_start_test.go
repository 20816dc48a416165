package stem_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemtype"
)

// downRevokes is the memory revoke store, unreachable (List fails) until
// up is set.
type downRevokes struct {
	stemdriver.RevokeStore
	up    atomic.Bool
	lists atomic.Int32 // failed List calls
}

func (d *downRevokes) List(ctx context.Context, ns string) ([]stemtype.RevokeRecord, error) {
	if !d.up.Load() {
		d.lists.Add(1)
		return nil, errors.New("dial tcp 127.0.0.1:16999: connection refused")
	}
	return d.RevokeStore.List(ctx, ns)
}

// countingBroker counts claims.
type countingBroker struct {
	stemdriver.Broker
	claims atomic.Int32
}

func (b *countingBroker) Claim(ctx context.Context, req stemdriver.ClaimRequest) ([]stemdriver.Delivery, error) {
	b.claims.Add(1)
	return b.Broker.Claim(ctx, req)
}

// TestWorkerWaitsForRevokeStore: a revoke store that cannot be reached at
// start keeps the worker from claiming (not a single Claim call) while it
// retries, logging why each time; once the store answers, the revoke set
// is loaded, so a task revoked meanwhile is cancelled, not run, and the
// others run. With FailFast, Run returns the error at once.
func TestWorkerWaitsForRevokeStore(t *testing.T) {
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "t-start-revokes"}
	ctx := context.Background()
	broker := &countingBroker{Broker: hub.Broker(opts)}
	results := hub.Results(opts)
	revokes := &downRevokes{RevokeStore: hub.Revokes()}
	var ran atomic.Int32
	reg := stem.NewRegistry()
	stem.Register(reg, "count", func(*stem.TaskContext, stem.Args) (any, error) {
		ran.Add(1)
		return nil, nil
	}, stem.TaskOptions{})
	client, err := stem.NewClient(stem.ClientConfig{Broker: broker, Results: results})
	if err != nil {
		t.Fatal(err)
	}
	ok1, _ := client.Enqueue(ctx, "count", nil, stem.EnqueueOptions{})
	ok2, _ := client.Enqueue(ctx, "count", nil, stem.EnqueueOptions{})
	revoked, _ := client.Enqueue(ctx, "count", nil, stem.EnqueueOptions{})
	// Stored beneath the store's outage: only a load finds it.
	if _, err := hub.Revokes().Upsert(ctx, stemtype.RevokeRecord{Namespace: opts.Namespace, TaskID: revoked, Version: time.Now().UnixMicro(),
		IssuedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}

	var logs testutil.SyncBuffer
	w, err := stem.NewWorker(stem.WorkerConfig{Namespace: opts.Namespace, Registry: reg, Broker: broker, Results: results,
		Revokes: revokes, Logger: slog.New(slog.NewTextHandler(&logs, nil)), ClaimWait: 10 * time.Millisecond,
		Stores: &stemtype.StoreInfo{Revokes: "redis://:xxxxx@127.0.0.1:16999/0"}})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()

	waitFor(t, "three failed loads", func() bool { return revokes.lists.Load() >= 3 })
	select {
	case <-w.Ready():
		t.Fatal("the worker is ready before its revoke set is loaded")
	default:
	}
	if n := broker.claims.Load(); n != 0 {
		t.Fatalf("%d claims before the revoke set was loaded, want 0", n)
	}
	out := logs.String()
	for _, s := range []string{"revoke store unreachable at start", "redis://:xxxxx@127.0.0.1:16999/0", "connection refused", "retry_in="} {
		if !strings.Contains(out, s) {
			t.Errorf("the log does not say %q:\n%s", s, out)
		}
	}

	revokes.up.Store(true)
	for _, id := range []string{ok1, ok2, revoked} {
		want := stemtype.StateSucceeded
		if id == revoked {
			want = stemtype.StateCancelled
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := client.Wait(wctx, id)
		cancel()
		if err != nil || res.State != want {
			t.Fatalf("task %s: %+v, %v; want %s", id, res, err, want)
		}
	}
	if n := ran.Load(); n != 2 {
		t.Errorf("the handler ran %d times, want 2 (the revoked task must not run)", n)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}

	// FailFast: the first failure ends Run, before any claim.
	revokes.up.Store(false)
	broker.claims.Store(0)
	w, err = stem.NewWorker(stem.WorkerConfig{Namespace: opts.Namespace, Registry: reg, Broker: broker,
		Revokes: revokes, Logger: slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)), FailFast: true})
	if err != nil {
		t.Fatal(err)
	}
	before := revokes.lists.Load()
	if err := w.Run(ctx); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Run with FailFast = %v, want the store's error", err)
	}
	if n := revokes.lists.Load() - before; n != 1 || broker.claims.Load() != 0 {
		t.Errorf("FailFast: %d loads and %d claims, want 1 and 0", n, broker.claims.Load())
	}
}

// TestWorkerStopsWhileWaitingForStores: a worker cancelled while it waits
// for its revoke store returns context.Canceled (a requested stop, not an
// outage), without claiming.
func TestWorkerStopsWhileWaitingForStores(t *testing.T) {
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "t-start-cancel"}
	broker := &countingBroker{Broker: hub.Broker(opts)}
	revokes := &downRevokes{RevokeStore: hub.Revokes()}
	w, err := stem.NewWorker(stem.WorkerConfig{Namespace: opts.Namespace, Registry: stem.NewRegistry(), Broker: broker,
		Revokes: revokes, Logger: slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var runErr error
	wg.Go(func() { runErr = w.Run(ctx) })
	waitFor(t, "a failed load", func() bool { return revokes.lists.Load() >= 1 })
	cancel()
	wg.Wait()
	if !errors.Is(runErr, context.Canceled) || broker.claims.Load() != 0 {
		t.Fatalf("Run = %v with %d claims; want context.Canceled and none", runErr, broker.claims.Load())
	}
}

// waitFor polls cond until it holds, failing the test after 20 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 20s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
