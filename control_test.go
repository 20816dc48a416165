package stem_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

func (e *env) controller() *stem.Controller {
	c, err := stem.NewController(stem.ControllerConfig{Namespace: e.ns, Control: e.control, Revokes: e.revokes, Results: e.results})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func TestRevokeWithoutTerminateLetsRunningTaskFinish(t *testing.T) {
	e := newEnv(t)
	started, release := make(chan struct{}), make(chan struct{})
	stem.Register(e.reg, "steady", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		close(started)
		<-release
		return "finished", tc.Heartbeat()
	}, stem.TaskOptions{})
	e.startWorker(stem.WorkerConfig{})
	id := e.enqueue("steady", nil, stem.EnqueueOptions{})
	<-started
	e.waitState(id, stemtype.StateStarted)
	if _, err := e.controller().Revoke(context.Background(), stem.Target{}, stem.RevokeOptions{TaskIDs: []string{id}}); err != nil {
		t.Fatal(err)
	}
	close(release)
	if res := e.wait(id); res.State != stemtype.StateSucceeded {
		t.Fatalf("got %+v", res)
	}
}

func TestMalformedControlMessageAnsweredWorkerKeepsWorking(t *testing.T) {
	e := newEnv(t)
	stem.Register(e.reg, "echo", func(*stem.TaskContext, stem.Args) (any, error) { return 1, nil }, stem.TaskOptions{})
	e.startWorker(stem.WorkerConfig{ID: "w1"})
	ctx := context.Background()
	bad := []byte(`{"requestId":"r-bad","type":"inspect","payload":{"includeRevoked":"yes"}}`)
	if err := e.control.Publish(ctx, nil, bad); err != nil {
		t.Fatal(err)
	}
	// Garbage that names no request id is only logged.
	if err := e.control.Publish(ctx, nil, []byte("\x00not json")); err != nil {
		t.Fatal(err)
	}
	var reply stemtype.ControlReply
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	e.control.Replies(cctx, "r-bad", func(b []byte) bool { return json.Unmarshal(b, &reply) != nil })
	if reply.Status != stemtype.ReplyError || reply.Error == nil || reply.WorkerID != "w1" {
		t.Fatalf("reply %+v", reply)
	}
	if res := e.wait(e.enqueue("echo", nil, stem.EnqueueOptions{})); res.State != stemtype.StateSucceeded {
		t.Fatalf("worker stopped working: %+v", res)
	}
	if r, err := e.controller().Ping(ctx, stem.Target{Workers: []string{"w1"}}); err != nil || len(r.Replies) != 1 {
		t.Fatalf("ping after malformed: %+v %v", r, err)
	}
}

func TestStatsCountersAfterKnownWorkload(t *testing.T) {
	e := newEnv(t)
	stem.Register(e.reg, "ok", func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }, stem.TaskOptions{})
	stem.Register(e.reg, "bad", func(*stem.TaskContext, stem.Args) (any, error) { return nil, errors.New("x") }, stem.TaskOptions{MaxRetries: 1, RetryPolicy: stem.ExponentialBackoff{Base: time.Millisecond}})
	e.startWorker(stem.WorkerConfig{ID: "w1", Concurrency: 3})
	var ids []string
	for range 3 {
		ids = append(ids, e.enqueue("ok", nil, stem.EnqueueOptions{}))
	}
	ids = append(ids, e.enqueue("bad", nil, stem.EnqueueOptions{}))
	for _, id := range ids {
		e.wait(id)
	}
	r, err := e.controller().Stats(context.Background(), stem.Target{Workers: []string{"w1"}})
	if err != nil || len(r.Replies) != 1 {
		t.Fatalf("%+v %v", r, err)
	}
	var s stemtype.StatsReply
	json.Unmarshal(r.Replies[0].Payload, &s)
	if s.Processed != 4 || s.Succeeded != 3 || s.Failed != 1 || s.Retried != 1 || s.Cancelled != 0 ||
		s.Concurrency != 3 || s.Namespace != "test" || s.Queues["default"] != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// A newer revoke of the same task may add --terminate to an earlier one
// that let the running task go on.
func TestNewerRevokeAddsTerminate(t *testing.T) {
	e := newEnv(t)
	started := make(chan struct{})
	stem.Register(e.reg, "loop", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		close(started)
		for {
			if err := tc.Heartbeat(); err != nil {
				return nil, err
			}
			time.Sleep(time.Millisecond)
		}
	}, stem.TaskOptions{})
	e.startWorker(stem.WorkerConfig{ID: "w1"})
	id := e.enqueue("loop", nil, stem.EnqueueOptions{})
	<-started
	e.waitState(id, stemtype.StateStarted)
	ctx := context.Background()
	target := stem.Target{Workers: []string{"w1"}}
	if r, err := e.controller().Revoke(ctx, target, stem.RevokeOptions{TaskIDs: []string{id}, Reason: "first"}); err != nil || len(r.Replies.Replies) != 1 {
		t.Fatalf("first revoke: %+v %v", r, err)
	}
	if r, _ := e.results.Get(ctx, id); r.State != stemtype.StateStarted {
		t.Fatalf("a revoke without terminate stopped the running task: %+v", r)
	}
	if _, err := e.controller().Revoke(ctx, target, stem.RevokeOptions{TaskIDs: []string{id}, Terminate: true, Reason: "second"}); err != nil {
		t.Fatal(err)
	}
	res := e.wait(id)
	if res.State != stemtype.StateCancelled || res.Meta[stemtype.MetaRevokedReason] != "second" {
		t.Fatalf("got %+v", res)
	}
}

func TestControllerDefaultExpiry(t *testing.T) {
	e := newEnv(t)
	c, err := stem.NewController(stem.ControllerConfig{Namespace: e.ns, Control: e.control, Revokes: e.revokes, DefaultExpiry: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Revoke(context.Background(), stem.Target{Timeout: 10 * time.Millisecond}, stem.RevokeOptions{TaskIDs: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	if d := res.Records[0].ExpiresAt.Sub(res.Records[0].IssuedAt); d != time.Hour {
		t.Fatalf("expiry %s, want the configured 1h", d)
	}
	res, _ = e.controller().Revoke(context.Background(), stem.Target{Timeout: 10 * time.Millisecond}, stem.RevokeOptions{TaskIDs: []string{"y"}})
	if d := res.Records[0].ExpiresAt.Sub(res.Records[0].IssuedAt); d != stem.DefaultRevokeExpiry {
		t.Fatalf("expiry %s, want DefaultRevokeExpiry", d)
	}
}
