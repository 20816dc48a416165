package stem_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemtype"
)

// TestUnknownTaskRetriesAreSigned: with signing keys, the retries of a task
// no handler knows carry a new header, so the worker signs them again: the
// task fails after its retries for that reason, kind unknown_task, rather
// than being dead-lettered as forged at its first retry.
func TestUnknownTaskRetriesAreSigned(t *testing.T) {
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "t-unknown-signed"}
	ctx := context.Background()
	keys, err := stem.NewSigningKeys("unknown-task-test-key-0123456789abcdefghijklmnop")
	if err != nil {
		t.Fatal(err)
	}
	broker, results := hub.Broker(opts), hub.Results(opts)
	client, err := stem.NewClient(stem.ClientConfig{Broker: broker, Results: results, SigningKeys: keys})
	if err != nil {
		t.Fatal(err)
	}
	w, err := stem.NewWorker(stem.WorkerConfig{Namespace: opts.Namespace, Registry: stem.NewRegistry(), Broker: broker,
		Results: results, SigningKeys: keys, Logger: quiet(), ClaimWait: 10 * time.Millisecond,
		UnknownTaskRetries: 2, UnknownTaskBackoff: stem.ExponentialBackoff{Base: time.Millisecond, Max: time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	id, err := client.Enqueue(ctx, "not.deployed.yet", nil, stem.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	res, err := client.Wait(wctx, id)
	if err != nil || res.State != stemtype.StateFailed || res.Error.Kind != "unknown_task" ||
		!strings.Contains(res.Error.Message, "after 2 retries") {
		t.Fatalf("got %+v (error %+v), %v; want failed, unknown_task, after 2 retries", res, res.Error, err)
	}
}
