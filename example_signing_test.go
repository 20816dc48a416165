package stem_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
)

// ExampleSigningKeys gives one set of signing keys to a client, a
// controller and a worker: the worker runs the signed task and answers the
// signed ping, and refuses a ping from a controller without the keys.
func ExampleSigningKeys() {
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "example"}
	broker, results, control, revokes := hub.Broker(opts), hub.Results(opts), hub.Control(opts), hub.Revokes()
	reg := stem.NewRegistry()
	stem.Register(reg, "greet", func(*stem.TaskContext, stem.Args) (any, error) { return "hello", nil }, stem.TaskOptions{})

	// In a real deployment: stem.ParseSigningKeys(os.Getenv("STEM_SIGNING_KEY")).
	keys, err := stem.NewSigningKeys("example-key-0123456789abcdefghijklmnopqrstuvwxyz")
	if err != nil {
		fmt.Println(err)
		return
	}
	client, _ := stem.NewClient(stem.ClientConfig{Broker: broker, Results: results, SigningKeys: keys})
	ctl, _ := stem.NewController(stem.ControllerConfig{Namespace: "example", Control: control, Revokes: revokes, SigningKeys: keys})
	w, _ := stem.NewWorker(stem.WorkerConfig{ID: "w1", Namespace: "example", Registry: reg, Broker: broker, Results: results,
		Control: control, Revokes: revokes, SigningKeys: keys, Logger: slog.New(slog.DiscardHandler)})

	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	defer func() { stop(); <-done }()
	<-w.Ready()

	id, _ := client.Enqueue(ctx, "greet", nil, stem.EnqueueOptions{})
	res, _ := client.Wait(ctx, id)
	fmt.Println("signed task:", res.State, string(res.Result))
	r, _ := ctl.Ping(ctx, stem.Target{Workers: []string{"w1"}})
	fmt.Println("signed ping:", r.Replies[0].Status)

	unsigned, _ := stem.NewController(stem.ControllerConfig{Namespace: "example", Control: control})
	r, _ = unsigned.Ping(ctx, stem.Target{Workers: []string{"w1"}})
	msg := r.Replies[0].Error.Message
	fmt.Println("unsigned ping:", r.Replies[0].Status, strings.SplitN(msg, ":", 2)[0])
	// Output:
	// signed task: succeeded "hello"
	// signed ping: ok
	// unsigned ping: error signature invalid
}
