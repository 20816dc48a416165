package isolated_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/isolated"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
)

// wordCountArgs are the arguments of example.wordcount.
type wordCountArgs struct {
	Text string `json:"text"`
}

// registerExample registers the example's isolated task. A program calls
// its registration in both roles; here the test binary's TestMain does, in
// the child role, through testRegistry.
func registerExample(reg *stem.Registry) {
	stem.Register(reg, "example.wordcount", func(tc *stem.TaskContext, a wordCountArgs) (any, error) {
		// A checkpoint: it travels to the worker, and returns an error
		// matching stem.ErrTaskRevoked once the task was terminated.
		if err := tc.Progress(50, nil); err != nil {
			return nil, err
		}
		return len(strings.Fields(a.Text)), nil
	}, stem.TaskOptions{Isolated: true})
}

// Example runs an isolated task in a child process of an in-memory worker.
// In a program, the first lines are main's: build the registry, then serve
// the child role, which returns at once in the worker.
func Example() {
	reg := stem.NewRegistry()
	registerExample(reg)
	isolated.ServeIfChild(reg)

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	pool, err := isolated.NewPool(isolated.PoolConfig{Registry: reg, Size: 2, Logger: quiet})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()

	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "example"}
	broker, results := hub.Broker(opts), hub.Results(opts)
	client, _ := stem.NewClient(stem.ClientConfig{Broker: broker, Results: results})
	worker, _ := stem.NewWorker(stem.WorkerConfig{Registry: reg, Broker: broker, Results: results,
		Namespace: "example", Concurrency: 2, Executor: pool, Logger: quiet})

	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- worker.Run(ctx) }()
	id, _ := client.Enqueue(ctx, "example.wordcount", wordCountArgs{Text: "the quick brown fox"}, stem.EnqueueOptions{})
	res, _ := client.Wait(ctx, id)
	stop()
	<-done
	fmt.Println(res.State, string(res.Result))
	// Output: succeeded 4
}
