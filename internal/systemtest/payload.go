package systemtest

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// jsonOfSize returns a JSON string value of exactly n bytes.
func jsonOfSize(n int) json.RawMessage {
	return json.RawMessage(`"` + strings.Repeat("x", n-2) + `"`)
}

// deadLetters records the reasons of the broker's DeadLetter calls.
type deadLetters struct {
	stemdriver.Broker
	mu      sync.Mutex
	reasons map[string]string // task id to reason
}

func (b *deadLetters) DeadLetter(ctx context.Context, d stemdriver.Delivery, reason string) error {
	b.mu.Lock()
	if d.Envelope != nil {
		b.reasons[d.Envelope.ID] = reason
	}
	b.mu.Unlock()
	return b.Broker.DeadLetter(ctx, d, reason)
}

func (b *deadLetters) reason(id string) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.reasons[id]
	return r, ok
}

// Arguments over the client's MaxPayload fail Enqueue and EnqueueBatch
// with an *EnqueueError matching ErrPayloadTooLarge that names the size
// and the limit, and nothing is written (no message, no pending state);
// arguments of exactly the limit pass. A worker meeting arguments over its
// own MaxPayload (from a producer without the limit) never calls the
// handler, which would decode them: it records the task failed, kind
// "payload_too_large" with the size and the limit, dead-letters it with
// that reason, and goes on running the next task.
func testOversizedPayload(t *testing.T, h Harness) {
	d := open(t, h)
	const limit = 1000
	ctx := context.Background()
	var ran atomic.Int32
	stem.Register(d.reg, "blob", func(tc *stem.TaskContext, a json.RawMessage) (any, error) {
		ran.Add(1)
		return len(a), nil
	}, stem.TaskOptions{})
	limited, err := stem.NewClient(stem.ClientConfig{Broker: d.roles.Broker, Results: d.roles.Results, Registry: d.reg,
		Logger: quiet(), MaxPayload: limit})
	if err != nil {
		t.Fatal(err)
	}

	tooLarge := func(what string, err error) {
		t.Helper()
		var ee *stem.EnqueueError
		var pe *stem.PayloadTooLargeError
		if !errors.As(err, &ee) || !errors.Is(err, stem.ErrPayloadTooLarge) || !errors.As(err, &pe) ||
			pe.Size != limit+1 || pe.Limit != limit || pe.Task != "blob" ||
			!strings.Contains(err.Error(), strconv.Itoa(limit+1)) || !strings.Contains(err.Error(), strconv.Itoa(limit)) ||
			!strings.Contains(err.Error(), "0 of") {
			t.Fatalf("%s: %v; want an *EnqueueError naming the size %d and the limit %d, nothing published", what, err, limit+1, limit)
		}
		for _, id := range ee.IDs {
			if _, err := d.roles.Results.Get(ctx, id); !errors.Is(err, stemdriver.ErrNotFound) {
				t.Fatalf("%s: a pending state of %s was written (%v)", what, id, err)
			}
		}
	}
	id, err := limited.Enqueue(ctx, "blob", jsonOfSize(limit+1), stem.EnqueueOptions{})
	if id != "" {
		t.Fatalf("Enqueue of an oversized task returned id %q", id)
	}
	tooLarge("Enqueue", err)
	ids, err := limited.EnqueueBatch(ctx, []stem.EnqueueRequest{
		{Task: "blob", Args: jsonOfSize(10)}, {Task: "blob", Args: jsonOfSize(limit + 1)}, {Task: "blob", Args: jsonOfSize(10)}})
	if ids != nil {
		t.Fatalf("EnqueueBatch with an oversized task returned ids %v", ids)
	}
	tooLarge("EnqueueBatch", err)
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("an oversized enqueue wrote %d message(s)", n)
	}

	// A producer without the limit; a worker with it.
	unlimited, err := stem.NewClient(stem.ClientConfig{Broker: d.roles.Broker, Results: d.roles.Results, Registry: d.reg,
		Logger: quiet(), MaxPayload: -1})
	if err != nil {
		t.Fatal(err)
	}
	big, err := unlimited.Enqueue(ctx, "blob", jsonOfSize(4*limit), stem.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	exact, err := limited.Enqueue(ctx, "blob", jsonOfSize(limit), stem.EnqueueOptions{})
	if err != nil {
		t.Fatalf("arguments of exactly the limit: %v", err)
	}
	dl := &deadLetters{Broker: d.roles.Broker, reasons: map[string]string{}}
	d.startWorker(stem.WorkerConfig{Broker: dl, MaxPayload: limit, Concurrency: 1})
	res := d.wait(big)
	if res.State != stemtype.StateFailed || res.Error == nil || res.Error.Kind != "payload_too_large" ||
		!strings.Contains(res.Error.Message, strconv.Itoa(4*limit)) || !strings.Contains(res.Error.Message, strconv.Itoa(limit)) ||
		!strings.Contains(res.Error.Message, `"blob"`) {
		t.Fatalf("oversized task: %+v error %+v; want failed, payload_too_large, naming the size and the limit", res, res.Error)
	}
	if res := d.wait(exact); res.State != stemtype.StateSucceeded || string(res.Result) != strconv.Itoa(limit) {
		t.Fatalf("task at the limit: %+v %+v", res, res.Error)
	}
	if n := ran.Load(); n != 1 {
		t.Fatalf("the handler ran %d times, want 1: never for the oversized task", n)
	}
	// The failure is recorded before the message is dead-lettered (and
	// settled apart from the next task's outcome): wait for it.
	d.waitFor("the oversized task dead-lettered", func(context.Context) bool {
		_, ok := dl.reason(big)
		return ok
	})
	if r, _ := dl.reason(big); !strings.Contains(r, strconv.Itoa(4*limit)) {
		t.Fatalf("the oversized task was dead-lettered with reason %q, want one naming its size", r)
	}
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("depth %d after the run, want 0", n)
	}
}
