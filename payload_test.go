package stem_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemtype"
)

func jsonString(n int) json.RawMessage {
	return json.RawMessage(`"` + strings.Repeat("x", n-2) + `"`)
}

// TestDefaultMaxPayload: without a MaxPayload, a client accepts arguments
// of DefaultMaxPayload (1 MiB) bytes and refuses one byte more, writing
// nothing; a worker without one refuses such a task (from a producer
// without the limit) without calling its handler.
func TestDefaultMaxPayload(t *testing.T) {
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "t-payload"}
	ctx := context.Background()
	broker, results := hub.Broker(opts), hub.Results(opts)
	client, err := stem.NewClient(stem.ClientConfig{Broker: broker, Results: results})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Enqueue(ctx, "big", jsonString(stem.DefaultMaxPayload+1), stem.EnqueueOptions{}); !errors.Is(err, stem.ErrPayloadTooLarge) ||
		!strings.Contains(err.Error(), "1048577 bytes, over the limit of 1048576 bytes") {
		t.Fatalf("Enqueue over the default limit: %v", err)
	}
	if n, _ := broker.Depth(ctx, stemtype.DefaultQueue); n != 0 {
		t.Fatalf("depth %d after a refused enqueue", n)
	}
	atLimit, err := client.Enqueue(ctx, "big", jsonString(stem.DefaultMaxPayload), stem.EnqueueOptions{})
	if err != nil {
		t.Fatalf("Enqueue at the default limit: %v", err)
	}
	unlimited, err := stem.NewClient(stem.ClientConfig{Broker: broker, Results: results, MaxPayload: -1})
	if err != nil {
		t.Fatal(err)
	}
	over, err := unlimited.Enqueue(ctx, "big", jsonString(stem.DefaultMaxPayload+1), stem.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}

	var ran atomic.Int32
	reg := stem.NewRegistry()
	stem.Register(reg, "big", func(_ *stem.TaskContext, a json.RawMessage) (any, error) {
		ran.Add(1)
		return len(a), nil
	}, stem.TaskOptions{})
	w, err := stem.NewWorker(stem.WorkerConfig{Namespace: opts.Namespace, Registry: reg, Broker: broker, Results: results,
		Logger: quiet(), ClaimWait: 10 * time.Millisecond})
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
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if res, err := client.Wait(wctx, atLimit); err != nil || res.State != stemtype.StateSucceeded {
		t.Fatalf("task at the limit: %+v %v", res, err)
	}
	res, err := client.Wait(wctx, over)
	if err != nil || res.State != stemtype.StateFailed || res.Error.Kind != "payload_too_large" ||
		!strings.Contains(res.Error.Message, "1048577 bytes") {
		t.Fatalf("task over the limit: %+v %v", res, err)
	}
	if n := ran.Load(); n != 1 {
		t.Fatalf("the handler ran %d times, want 1 (never for the oversized task)", n)
	}
}
