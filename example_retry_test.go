package stem_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
)

// Example_retries shows how a failed attempt is retried: an error is
// retried while TaskOptions.MaxRetries allows, after the delay of the
// task's RetryPolicy; an error wrapped in NoRetry fails the task at once.
func Example_retries() {
	reg := stem.NewRegistry()
	stem.Register(reg, "fetch", func(tc *stem.TaskContext, url string) (any, error) {
		if tc.Attempt() < 2 {
			return nil, fmt.Errorf("fetch %s: service unavailable", url) // retried
		}
		return fmt.Sprintf("fetched %s on attempt %d", url, tc.Attempt()), nil
	}, stem.TaskOptions{MaxRetries: 3, RetryPolicy: stem.ExponentialBackoff{Base: 10 * time.Millisecond}})
	stem.Register(reg, "parse", func(tc *stem.TaskContext, doc string) (any, error) {
		return nil, stem.NoRetry(errors.New("parse: not a document")) // retrying cannot help
	}, stem.TaskOptions{MaxRetries: 3})

	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "example"}
	broker, results := hub.Broker(opts), hub.Results(opts)
	client, _ := stem.NewClient(stem.ClientConfig{Broker: broker, Results: results, Registry: reg})
	worker, _ := stem.NewWorker(stem.WorkerConfig{Registry: reg, Broker: broker, Results: results,
		Namespace: "example", Logger: slog.New(slog.DiscardHandler)})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- worker.Run(ctx) }()

	fetch, _ := client.Enqueue(ctx, "fetch", "example.com", stem.EnqueueOptions{})
	parse, _ := client.Enqueue(ctx, "parse", "{", stem.EnqueueOptions{})
	res, _ := client.Wait(ctx, fetch)
	fmt.Println(res.State, string(res.Result))
	res, _ = client.Wait(ctx, parse)
	fmt.Println(res.State, res.Attempt, res.Error.Message)
	stop()
	<-done
	// Output:
	// succeeded "fetched example.com on attempt 2"
	// failed 0 parse: not a document
}
