package stem_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// A shutdown command stops the worker in its mode, replying first: soft
// cancels a running task at once (the grace period here is an hour), and
// the task is released; hard releases a task whose handler ignores its
// context without waiting for it. Another consumer claims the released
// task long before its lease (an hour) would expire.
func TestShutdownCommandModes(t *testing.T) {
	for _, mode := range []string{stemtype.ShutdownSoft, stemtype.ShutdownHard} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t)
			running := make(chan struct{})
			unblock := make(chan struct{})
			defer close(unblock)
			stem.Register(e.reg, "long", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
				close(running)
				if mode == stemtype.ShutdownHard {
					<-unblock // ignores its context
					return nil, context.Cause(tc)
				}
				<-tc.Done()
				return nil, context.Cause(tc)
			}, stem.TaskOptions{})
			id := e.enqueue("long", nil, stem.EnqueueOptions{})
			w := e.newWorker(stem.WorkerConfig{ID: "w-" + mode, Lease: time.Hour, ShutdownTimeout: time.Hour})
			done := make(chan error, 1)
			go func() { done <- w.Run(context.Background()) }()
			<-running

			r, err := e.controller().Shutdown(context.Background(), stem.Target{Workers: []string{"w-" + mode}, Timeout: 10 * time.Second}, mode)
			if err != nil {
				t.Fatal(err)
			}
			reps := stem.Decode[stemtype.ShutdownReply](r)
			if len(reps) != 1 || reps[0].Err != nil || reps[0].Payload.Mode != mode || reps[0].Payload.Inflight != 1 || len(r.Missing) != 0 {
				t.Fatalf("shutdown replies: %+v, missing %v", reps, r.Missing)
			}
			if err := <-done; err != nil {
				t.Fatalf("Run: %v", err)
			}
			ds, err := e.broker.Claim(context.Background(), stemdriver.ClaimRequest{Queues: []string{stemtype.DefaultQueue},
				Consumer: "other", Max: 1, Lease: time.Minute, Wait: 10 * time.Second})
			if err != nil || len(ds) != 1 || ds[0].Envelope == nil || ds[0].Envelope.ID != id {
				t.Fatalf("the task was not released: %v, %v", ds, err)
			}
		})
	}
	_, err := newEnv(t).controller().Shutdown(context.Background(), stem.Target{}, "gentle")
	if err == nil || !strings.Contains(err.Error(), `"gentle"`) {
		t.Fatalf("shutdown with an unknown mode: %v", err)
	}
}
