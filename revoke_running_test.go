package stem_test

import (
	"context"
	"testing"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// A task revoked without terminate while it runs finishes and is recorded
// succeeded (DESIGN §2.5), even when the result backend is slow and has
// not recorded the task's start yet when the controller looks: the
// controller must not mark a task a worker holds as cancelled, since a
// final state is final and the worker's outcome could then never be
// recorded.
func TestRevokeOfTaskWhoseStartIsNotRecordedYetKeepsItsOutcome(t *testing.T) {
	e := newEnv(t)
	running, finish := make(chan struct{}), make(chan struct{})
	stem.Register(e.reg, "steady", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		close(running)
		<-finish
		return "finished", nil
	}, stem.TaskOptions{})
	id := e.enqueue("steady", nil, stem.EnqueueOptions{})
	plain := e.results
	slow := &gatedResults{ResultBackend: e.results, entered: make(chan struct{}), gate: make(chan struct{})}
	e.results = slow // the worker's backend: its first write (started) is held
	e.startWorker(stem.WorkerConfig{})
	<-running
	<-slow.entered
	e.results = plain // the controller's
	res, err := e.controller().Revoke(context.Background(), stem.Target{}, stem.RevokeOptions{TaskIDs: []string{id}})
	if err != nil {
		t.Fatal(err)
	}
	if res.MarkErr != nil {
		t.Fatal(res.MarkErr)
	}
	close(finish)
	close(slow.gate)
	if r := e.wait(id); r.State != stemtype.StateSucceeded || string(r.Result) != `"finished"` {
		t.Fatalf("the running task revoked without terminate ended %s %s %+v, want succeeded", r.State, r.Result, r.Error)
	}
}

// The same race with a revoke addressed to another worker than the one
// running the task: that worker does not answer, so the controller cannot
// know it holds the task, and marks nothing.
func TestTargetedRevokeNeverMarksTaskOfAnotherWorker(t *testing.T) {
	e := newEnv(t)
	running, finish := make(chan struct{}), make(chan struct{})
	stem.Register(e.reg, "steady", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		close(running)
		<-finish
		return "finished", nil
	}, stem.TaskOptions{})
	plain := e.results
	e.startWorker(stem.WorkerConfig{ID: "idle", Queues: []string{"elsewhere"}})
	slow := &gatedResults{ResultBackend: e.results, entered: make(chan struct{}), gate: make(chan struct{})}
	e.results = slow
	e.startWorker(stem.WorkerConfig{ID: "busy"})
	e.results = plain
	id := e.enqueue("steady", nil, stem.EnqueueOptions{})
	<-running
	<-slow.entered
	res, err := e.controller().Revoke(context.Background(), stem.Target{Workers: []string{"idle"}},
		stem.RevokeOptions{TaskIDs: []string{id}})
	if err != nil || res.MarkErr != nil {
		t.Fatal(err, res.MarkErr)
	}
	close(finish)
	close(slow.gate)
	if r := e.wait(id); r.State != stemtype.StateSucceeded {
		t.Fatalf("the task running on another worker ended %s %+v, want succeeded", r.State, r.Error)
	}
}
