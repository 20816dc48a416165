package stem_test

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemtype"
)

// ExampleController_Revoke revokes a queued task, which then never runs,
// and terminates a running one, whose context is cancelled with cause
// ErrTaskRevoked. Both end cancelled, with the revoke's reason recorded.
func ExampleController_Revoke() {
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "example"}
	broker, results, control, revokes := hub.Broker(opts), hub.Results(opts), hub.Control(opts), hub.Revokes()
	ctl, _ := stem.NewController(stem.ControllerConfig{Namespace: "example", Control: control,
		Revokes: revokes, Results: results})

	reg := stem.NewRegistry()
	stem.Register(reg, "report", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		fmt.Println("report ran") // never printed: the task is revoked before it starts
		return nil, nil
	}, stem.TaskOptions{})
	running := make(chan struct{})
	stem.Register(reg, "watch", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		close(running)
		<-tc.Done() // a long task also checks tc.Heartbeat() between steps
		return nil, tc.Heartbeat()
	}, stem.TaskOptions{MaxRetries: 3}) // a terminated task is never retried

	client, _ := stem.NewClient(stem.ClientConfig{Broker: broker, Results: results, Registry: reg})
	ctx := context.Background()

	// Revoke a queued task. The revoke is stored before it is published,
	// so workers that start later honour it too.
	report, _ := client.Enqueue(ctx, "report", nil, stem.EnqueueOptions{})
	if _, err := ctl.Revoke(ctx, stem.Target{}, stem.RevokeOptions{TaskIDs: []string{report}, Reason: "not needed"}); err != nil {
		fmt.Println(err)
		return
	}

	worker, _ := stem.NewWorker(stem.WorkerConfig{ID: "w1", Namespace: "example", Registry: reg,
		Broker: broker, Results: results, Control: control, Revokes: revokes, Logger: slog.New(slog.DiscardHandler)})
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- worker.Run(wctx) }()
	defer func() { stop(); <-done }()

	// Terminate a running task.
	watch, _ := client.Enqueue(ctx, "watch", nil, stem.EnqueueOptions{})
	<-running
	if _, err := ctl.Revoke(ctx, stem.Target{}, stem.RevokeOptions{TaskIDs: []string{watch}, Terminate: true,
		Reason: "taking too long"}); err != nil {
		fmt.Println(err)
		return
	}

	for _, id := range []string{report, watch} {
		res, _ := client.Wait(ctx, id)
		fmt.Printf("%s: %s (%s)\n", res.Task, res.State, res.Meta[stemtype.MetaRevokedReason])
	}
	// Output:
	// report: cancelled (not needed)
	// watch: cancelled (taking too long)
}
