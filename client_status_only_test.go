package stem_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemtype"
)

// TestClientWithoutBroker: a Client with a result backend and no broker
// reads task states (the CLI's `task status` opens nothing else) and
// refuses to enqueue; one with neither is refused.
func TestClientWithoutBroker(t *testing.T) {
	ctx := context.Background()
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "status-only"}
	producer, err := stem.NewClient(stem.ClientConfig{Broker: hub.Broker(opts), Results: hub.Results(opts)})
	if err != nil {
		t.Fatal(err)
	}
	id, err := producer.Enqueue(ctx, "t", nil, stem.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	reader, err := stem.NewClient(stem.ClientConfig{Results: hub.Results(opts)})
	if err != nil {
		t.Fatalf("NewClient with Results only: %v", err)
	}
	if r, err := reader.Status(ctx, id); err != nil || r.State != stemtype.StatePending {
		t.Fatalf("Status = %+v, %v; want pending", r, err)
	}
	if _, err := reader.Status(ctx, "nope"); !errors.Is(err, stem.ErrNotFound) {
		t.Fatalf("Status(unknown) = %v, want ErrNotFound", err)
	}
	if ids, err := reader.Enqueue(ctx, "t", nil, stem.EnqueueOptions{}); err == nil {
		t.Fatalf("Enqueue without a broker = %q, want an error", ids)
	}
	if _, err := stem.NewClient(stem.ClientConfig{}); err == nil {
		t.Fatal("NewClient with neither broker nor results: no error")
	}
}
