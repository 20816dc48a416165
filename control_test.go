package stem_test

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"sync/atomic"
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

func TestPingReachesEveryWorkerAndOneByID(t *testing.T) {
	e := newEnv(t)
	for _, id := range []string{"w1", "w2", "w3"} {
		e.startWorker(stem.WorkerConfig{ID: id})
	}
	ctx := context.Background()
	all, err := e.controller().Ping(ctx, stem.Target{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range all.Replies {
		got = append(got, r.WorkerID)
	}
	sort.Strings(got)
	if len(got) != 3 || got[0] != "w1" || got[2] != "w3" {
		t.Fatalf("broadcast ping replies from %v", got)
	}
	one, err := e.controller().Ping(ctx, stem.Target{Workers: []string{"w2", "ghost"}, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if len(one.Replies) != 1 || one.Replies[0].WorkerID != "w2" || len(one.Missing) != 1 || one.Missing[0] != "ghost" {
		t.Fatalf("targeted ping: %+v", one)
	}
}

func TestRevokedQueuedTaskNeverRuns(t *testing.T) {
	e := newEnv(t)
	var ran atomic.Bool
	e.reg.MustAdd(stem.Task{Name: "victim", Run: func(*stem.TaskContext, stem.Args) (any, error) {
		ran.Store(true)
		return nil, nil
	}})
	id := e.enqueue("victim", nil, stem.EnqueueOptions{})
	_, _, err := e.controller().Revoke(context.Background(), stem.Target{Timeout: 100 * time.Millisecond},
		stem.RevokeOptions{TaskIDs: []string{id}, Reason: "bad data", RequestedBy: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	// Cancelled at once in the result backend, before any worker met it.
	if r, _ := e.results.Get(context.Background(), id); r.State != stemtype.StateCancelled {
		t.Fatalf("state right after revoke: %+v", r)
	}
	e.startWorker(stem.WorkerConfig{})
	// The worker loaded the revoke at start-up: the task is acknowledged as
	// cancelled with the revoke's metadata, never run.
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, _ := e.broker.Depth(context.Background(), "default")
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("revoked task never left the queue")
		}
		time.Sleep(5 * time.Millisecond)
	}
	res := e.wait(id)
	if ran.Load() || res.State != stemtype.StateCancelled || res.Meta[stemtype.MetaRevokedReason] != "bad data" ||
		res.Meta[stemtype.MetaRevokedBy] != "ops" || res.Meta[stemtype.MetaRevokedAt] == "" {
		t.Fatalf("ran=%v result %+v", ran.Load(), res)
	}
}

func TestTerminateCancelsRunningInlineTaskWithoutRetry(t *testing.T) {
	e := newEnv(t)
	started := make(chan struct{})
	var runs atomic.Int32
	var hbErr atomic.Value
	e.reg.MustAdd(stem.Task{Name: "loop", Options: stem.TaskOptions{MaxRetries: 5},
		Run: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
			if runs.Add(1) == 1 {
				close(started)
			}
			for {
				if err := tc.Heartbeat(); err != nil {
					hbErr.Store(err)
					if !errors.Is(context.Cause(tc), stem.ErrTaskRevoked) {
						return nil, errors.New("cause is not ErrTaskRevoked")
					}
					return "ignored result", nil // whatever it returns, the task is cancelled
				}
				time.Sleep(time.Millisecond)
			}
		}})
	e.startWorker(stem.WorkerConfig{ID: "w1"})
	id := e.enqueue("loop", nil, stem.EnqueueOptions{})
	<-started
	e.waitState(id, stemtype.StateStarted)
	_, replies, err := e.controller().Revoke(context.Background(), stem.Target{Workers: []string{"w1"}},
		stem.RevokeOptions{TaskIDs: []string{id}, Terminate: true, RequestedBy: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	var rr stemtype.RevokeReply
	if len(replies.Replies) != 1 || json.Unmarshal(replies.Replies[0].Payload, &rr) != nil || len(rr.Inflight) != 1 || rr.Inflight[0] != id {
		t.Fatalf("revoke replies %+v", replies)
	}
	res := e.wait(id)
	err, _ = hbErr.Load().(error)
	if !errors.Is(err, stem.ErrTaskRevoked) {
		t.Fatalf("heartbeat returned %v, want ErrTaskRevoked", err)
	}
	if res.State != stemtype.StateCancelled || runs.Load() != 1 || res.Meta[stemtype.MetaRevokedBy] != "ops" {
		t.Fatalf("result %+v after %d runs", res, runs.Load())
	}
}

func TestRevokeWithoutTerminateLetsRunningTaskFinish(t *testing.T) {
	e := newEnv(t)
	started, release := make(chan struct{}), make(chan struct{})
	e.reg.MustAdd(stem.Task{Name: "steady", Run: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		close(started)
		<-release
		return "finished", tc.Heartbeat()
	}})
	e.startWorker(stem.WorkerConfig{})
	id := e.enqueue("steady", nil, stem.EnqueueOptions{})
	<-started
	e.waitState(id, stemtype.StateStarted)
	if _, _, err := e.controller().Revoke(context.Background(), stem.Target{}, stem.RevokeOptions{TaskIDs: []string{id}}); err != nil {
		t.Fatal(err)
	}
	close(release)
	if res := e.wait(id); res.State != stemtype.StateSucceeded {
		t.Fatalf("got %+v", res)
	}
}

func TestMalformedControlMessageAnsweredWorkerKeepsWorking(t *testing.T) {
	e := newEnv(t)
	e.reg.MustAdd(stem.Task{Name: "echo", Run: func(*stem.TaskContext, stem.Args) (any, error) { return 1, nil }})
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
	e.reg.MustAdd(stem.Task{Name: "ok", Run: func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }})
	e.reg.MustAdd(stem.Task{Name: "bad", Options: stem.TaskOptions{MaxRetries: 1, RetryPolicy: stem.ExponentialBackoff{Base: time.Millisecond}},
		Run: func(*stem.TaskContext, stem.Args) (any, error) { return nil, errors.New("x") }})
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
	e.reg.MustAdd(stem.Task{Name: "loop", Run: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		close(started)
		for {
			if err := tc.Heartbeat(); err != nil {
				return nil, err
			}
			time.Sleep(time.Millisecond)
		}
	}})
	e.startWorker(stem.WorkerConfig{ID: "w1"})
	id := e.enqueue("loop", nil, stem.EnqueueOptions{})
	<-started
	e.waitState(id, stemtype.StateStarted)
	ctx := context.Background()
	target := stem.Target{Workers: []string{"w1"}}
	if _, r, err := e.controller().Revoke(ctx, target, stem.RevokeOptions{TaskIDs: []string{id}, Reason: "first"}); err != nil || len(r.Replies) != 1 {
		t.Fatalf("first revoke: %+v %v", r, err)
	}
	if r, _ := e.results.Get(ctx, id); r.State != stemtype.StateStarted {
		t.Fatalf("a revoke without terminate stopped the running task: %+v", r)
	}
	if _, _, err := e.controller().Revoke(ctx, target, stem.RevokeOptions{TaskIDs: []string{id}, Terminate: true, Reason: "second"}); err != nil {
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
	recs, _, err := c.Revoke(context.Background(), stem.Target{Timeout: 10 * time.Millisecond}, stem.RevokeOptions{TaskIDs: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	if d := recs[0].ExpiresAt.Sub(recs[0].IssuedAt); d != time.Hour {
		t.Fatalf("expiry %s, want the configured 1h", d)
	}
	recs, _, _ = e.controller().Revoke(context.Background(), stem.Target{Timeout: 10 * time.Millisecond}, stem.RevokeOptions{TaskIDs: []string{"y"}})
	if d := recs[0].ExpiresAt.Sub(recs[0].IssuedAt); d != stem.DefaultRevokeExpiry {
		t.Fatalf("expiry %s, want DefaultRevokeExpiry", d)
	}
}
