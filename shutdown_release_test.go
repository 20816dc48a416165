package stem_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// stalledResults holds every Put until gate is closed, then fails it: a
// result backend that stalls, then is found unreachable.
type stalledResults struct {
	stemdriver.ResultBackend
	gate chan struct{}
}

func (r *stalledResults) Put(ctx context.Context, _ ...*stemtype.TaskResult) error {
	select {
	case <-r.gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	return errors.New("result backend unreachable")
}

// A task released at shutdown is released at once even when a result
// write of the same batch (its own last progress report) fails: a release
// records no result, so it never waits for one. Another consumer claims
// the task right after the worker stopped, long before its 30 s lease.
func TestShutdownReleaseSurvivesFailedResultWrite(t *testing.T) {
	e := newEnv(t)
	running := make(chan struct{})
	stem.Register(e.reg, "stubborn", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		// Queued behind the stalled write of the started state: it
		// shares a batch with the release below.
		if err := tc.Progress(50, nil); err != nil {
			return nil, err
		}
		close(running)
		<-tc.Done()
		return nil, context.Cause(tc)
	}, stem.TaskOptions{})
	id := e.enqueue("stubborn", nil, stem.EnqueueOptions{})
	results := &stalledResults{ResultBackend: e.results, gate: make(chan struct{})}
	e.results = results
	var once sync.Once
	queued := make(chan struct{}) // the release went to the result writer
	_, stop := e.startHookedWorker(stem.WorkerConfig{Lease: 30 * time.Second, ShutdownTimeout: 50 * time.Millisecond},
		hooks{settled: func(got string) {
			if got == id {
				once.Do(func() { close(queued) })
			}
		}})
	<-running
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	<-queued
	close(results.gate)
	<-stopped
	ds, err := e.broker.Claim(context.Background(), stemdriver.ClaimRequest{Queues: []string{"default"},
		Consumer: "next", Max: 1, Lease: time.Second, Wait: time.Second})
	if err != nil || len(ds) != 1 || ds[0].Envelope.ID != id {
		t.Fatalf("the task released at shutdown is not claimable (left to its lease?): %v %v", ds, err)
	}
}
