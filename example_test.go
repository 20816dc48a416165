package stem_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
)

// Example defines a task, enqueues it and runs a worker until the result is
// recorded, on the in-memory backend.
func Example() {
	type greetArgs struct {
		Name string `json:"name"`
	}
	reg := stem.NewRegistry()
	stem.Register(reg, "greet", func(tc *stem.TaskContext, a greetArgs) (any, error) {
		return "hello, " + a.Name, nil
	}, stem.TaskOptions{})

	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "example"}
	broker, results := hub.Broker(opts), hub.Results(opts)

	client, _ := stem.NewClient(stem.ClientConfig{Broker: broker, Results: results})
	ctx := context.Background()
	id, _ := client.Enqueue(ctx, "greet", greetArgs{Name: "gopher"}, stem.EnqueueOptions{})

	worker, _ := stem.NewWorker(stem.WorkerConfig{Registry: reg, Broker: broker, Results: results,
		Namespace: "example", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- worker.Run(wctx) }()

	res, _ := client.Wait(ctx, id)
	stop()
	<-done
	fmt.Println(res.State, string(res.Result))
	// Output: succeeded "hello, gopher"
}
