package stem_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// finalsOnly is a result backend that implements stemdriver.FinalGetter
// (by filtering GetMany of the backend it wraps) and refuses GetMany, so a
// worker that checks its claims with GetMany cannot tell which finished.
type finalsOnly struct {
	stemdriver.ResultBackend
	calls atomic.Int32
}

func (r *finalsOnly) GetMany(context.Context, ...string) ([]*stemtype.TaskResult, error) {
	return nil, errors.New("GetMany called on a backend with GetFinalMany")
}

func (r *finalsOnly) GetFinalMany(ctx context.Context, ids ...string) ([]*stemtype.TaskResult, error) {
	r.calls.Add(1)
	rs, err := r.ResultBackend.GetMany(ctx, ids...)
	for i, res := range rs {
		if res != nil && !res.State.Final() {
			rs[i] = nil
		}
	}
	return rs, err
}

// A worker whose result backend implements stemdriver.FinalGetter checks
// its redeliveries with GetFinalMany: a redelivered finished task is
// acknowledged without running, another one runs.
func TestClaimCheckUsesFinalGetter(t *testing.T) {
	e := newEnv(t)
	ran := make(chan string, 2)
	stem.Register(e.reg, "once", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		ran <- tc.TaskID()
		return "ran", nil
	}, stem.TaskOptions{})
	at := time.Now().UTC().Truncate(time.Millisecond)
	finished := stem.NewTaskID()
	publishFinished(t, e, finished, "once", at)
	abandonLease(t, e.broker, finished) // the worker's claim is a redelivery
	fresh := e.enqueue("once", nil, stem.EnqueueOptions{})
	res := &finalsOnly{ResultBackend: e.results}
	e.results = res
	watch := &ackWatch{Broker: e.broker, acked: make(chan string, 4)}
	e.broker = watch
	_, stop := e.startWorker(stem.WorkerConfig{})
	acked := map[string]bool{}
	for !acked[finished] || !acked[fresh] {
		acked[<-watch.acked] = true
	}
	stop()
	if r := e.wait(fresh); r.State != stemtype.StateSucceeded || string(r.Result) != `"ran"` {
		t.Fatalf("the fresh task: %+v", r)
	}
	if got := <-ran; got != fresh {
		t.Fatalf("task %s ran, want %s", got, fresh)
	}
	select {
	case got := <-ran:
		t.Fatalf("task %s ran too", got)
	default:
	}
	if r := e.wait(finished); string(r.Result) != `"first"` {
		t.Fatalf("the finished task's result changed: %+v", r)
	}
	if res.calls.Load() == 0 {
		t.Fatal("the worker never called GetFinalMany")
	}
}
