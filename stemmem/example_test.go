package stemmem_test

import (
	"context"
	"fmt"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemtype"
)

// A producer and a worker share one Hub: the worker claims the task with a
// lease, runs it, and acknowledges it, which removes it from the queue.
func Example() {
	ctx := context.Background()
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "demo"}

	producer := hub.Broker(opts)
	defer producer.Close()
	err := producer.Publish(ctx, &stemtype.Envelope{
		ID:        "task-1",
		Task:      "email.send",
		Args:      []byte(`{"to":"ada@example.com"}`),
		Queue:     "default",
		CreatedAt: time.Now(),
	})
	if err != nil {
		fmt.Println("publish:", err)
		return
	}

	worker := hub.Broker(opts)
	defer worker.Close()
	ds, err := worker.Claim(ctx, stemdriver.ClaimRequest{
		Queues:   []string{"default"},
		Consumer: "worker-1",
		Max:      10,
		Lease:    30 * time.Second,
		Wait:     time.Second,
	})
	if err != nil {
		fmt.Println("claim:", err)
		return
	}
	for _, d := range ds {
		fmt.Printf("claimed %s (%s) args %s\n", d.Envelope.ID, d.Envelope.Task, d.Envelope.Args)
	}
	if err := worker.Ack(ctx, ds...); err != nil {
		fmt.Println("ack:", err)
		return
	}
	depth, err := producer.Depth(ctx, "default")
	if err != nil {
		fmt.Println("depth:", err)
		return
	}
	fmt.Println("depth after ack:", depth)
	// Output:
	// claimed task-1 (email.send) args {"to":"ada@example.com"}
	// depth after ack: 0
}
