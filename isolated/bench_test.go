package isolated_test

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/stem-go/stem/internal/testutil"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/isolated"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemredis"
	"github.com/stem-go/stem/stemtype"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// BenchmarkExecute measures one task through the executor seam: inline
// (the handler called in process, as the worker does) against isolated (a
// run and a result over the pipes of a reused child).
func BenchmarkExecute(b *testing.B) {
	reg := testRegistry()
	env := &stemtype.Envelope{ID: "bench", Task: "test.noop", Queue: "default", Args: json.RawMessage(`{"a":1}`)}
	b.Run("inline", func(b *testing.B) {
		task, _ := reg.Lookup("bench.noop-inline")
		for b.Loop() {
			tc := stem.NewTaskContext(context.Background(), stem.TaskInfo{ID: env.ID, Task: task.Name}, nil, nil)
			if _, err := task.Run(tc, stem.Args(env.Args)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("isolated", func(b *testing.B) {
		p := newPool(b, isolated.PoolConfig{Registry: reg, Size: 1, Logger: quietLogger()})
		task, _ := reg.Lookup("test.noop")
		for b.Loop() {
			tc := stem.NewTaskContext(context.Background(), stem.TaskInfo{ID: env.ID, Task: task.Name}, nil, nil)
			if _, err := p.Execute(tc, task, env, nil); err != nil {
				b.Fatal(err)
			}
		}
		if s := p.Stats(); s.Started != 1 {
			b.Errorf("%d children started, want the one reused", s.Started)
		}
	})
	b.Run("isolated-parallel", func(b *testing.B) {
		p := newPool(b, isolated.PoolConfig{Registry: reg, Size: 4, Logger: quietLogger()})
		task, _ := reg.Lookup("test.noop")
		b.SetParallelism(4)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				tc := stem.NewTaskContext(context.Background(), stem.TaskInfo{ID: env.ID, Task: task.Name}, nil, nil)
				if _, err := p.Execute(tc, task, env, nil); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkCheckpoint measures one Heartbeat of an isolated task: a request
// to the worker and its reply.
func BenchmarkCheckpoint(b *testing.B) {
	reg := testRegistry()
	p := newPool(b, isolated.PoolConfig{Registry: reg, Size: 1, Logger: quietLogger()})
	task, _ := reg.Lookup("test.heartbeats")
	env := &stemtype.Envelope{ID: "bench", Task: task.Name, Args: json.RawMessage(fmt.Sprintf(`{"n":%d}`, b.N))}
	sig := newRecorder()
	tc := stem.NewTaskContext(context.Background(), stem.TaskInfo{ID: env.ID, Task: task.Name}, sig, nil)
	b.ResetTimer()
	if _, err := p.Execute(tc, task, env, nil); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if sig.heartbeats != b.N {
		b.Errorf("%d heartbeats reached the worker, want %d", sig.heartbeats, b.N)
	}
}

// BenchmarkWorker drains no-op tasks through a worker on the in-memory
// backend at concurrency 4, inline against isolated: ns/op is the wall
// time per task, everything included.
func BenchmarkWorker(b *testing.B) {
	for _, name := range []string{"bench.noop-inline", "test.noop"} {
		b.Run(name, func(b *testing.B) {
			reg := testRegistry()
			hub := stemmem.New()
			opts := stemdriver.Options{Namespace: "bench"}
			broker, results := hub.Broker(opts), hub.Results(opts)
			p := newPool(b, isolated.PoolConfig{Registry: reg, Size: 4, Logger: quietLogger()})
			client, _ := stem.NewClient(stem.ClientConfig{Broker: broker, Results: results})
			w, err := stem.NewWorker(stem.WorkerConfig{Registry: reg, Broker: broker, Results: results, Namespace: "bench",
				Concurrency: 4, Executor: p, Logger: quietLogger()})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			reqs := make([]stem.EnqueueRequest, b.N)
			for i := range reqs {
				reqs[i] = stem.EnqueueRequest{Task: name}
			}
			ids, err := client.EnqueueBatch(ctx, reqs)
			if err != nil {
				b.Fatal(err)
			}
			wctx, stop := context.WithCancel(ctx)
			done := make(chan error)
			b.ResetTimer()
			go func() { done <- w.Run(wctx) }()
			for {
				if s := w.Stats(ctx); s.Processed >= int64(b.N) {
					break
				}
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			stop()
			<-done
			if res, err := client.Wait(ctx, ids[len(ids)-1]); err != nil || res.State != stemtype.StateSucceeded {
				b.Fatalf("last task: %+v, %v", res, err)
			}
		})
	}
}

// BenchmarkTerminateLatency measures, for an isolated task waiting on its
// context, the time from the cancel of the worker's task context with a
// revoke (what a terminate revoke does) until the child saw its own
// context cancelled (child-cancel), and until Execute returned
// (execute-return).
func BenchmarkTerminateLatency(b *testing.B) {
	reg := testRegistry()
	p := newPool(b, isolated.PoolConfig{Registry: reg, Size: 1, Logger: quietLogger()})
	var toChild, toReturn []time.Duration
	for b.Loop() {
		b.StopTimer()
		c := start(b, p, context.Background(), "test.wait-ctx", "")
		c.sig.await(b)
		b.StartTimer()
		t0 := time.Now()
		c.cancel(&stem.RevokedError{TaskID: "bench"})
		res, err := c.wait(b)
		returned := time.Since(t0)
		b.StopTimer()
		var r struct {
			CancelledAt int64 `json:"cancelledAt"`
		}
		if err != nil || json.Unmarshal(res, &r) != nil {
			b.Fatalf("test.wait-ctx: %s, %v", res, err)
		}
		toChild = append(toChild, time.Unix(0, r.CancelledAt).Sub(t0))
		toReturn = append(toReturn, returned)
		b.StartTimer()
	}
	reportPercentiles(b, "child-cancel", toChild)
	reportPercentiles(b, "execute-return", toReturn)
}

// BenchmarkKillLatency measures, for an isolated task that ignores its
// context, the time from a terminate with a zero kill-after grace period
// until Execute returned: SIGTERM to the child's process group, the child
// reaped, its pipes drained and closed. Starting the replacement child is
// not counted.
func BenchmarkKillLatency(b *testing.B) {
	reg := testRegistry()
	p := newPool(b, isolated.PoolConfig{Registry: reg, Size: 1, Logger: quietLogger()})
	var lat []time.Duration
	for b.Loop() {
		b.StopTimer()
		c := start(b, p, context.Background(), "test.spin", "")
		c.sig.await(b)
		b.StartTimer()
		t0 := time.Now()
		c.cancel(&stem.RevokedError{TaskID: "bench"})
		c.kill <- 0
		if _, err := c.wait(b); err == nil {
			b.Fatal("the spinning task succeeded")
		}
		lat = append(lat, time.Since(t0))
	}
	reportPercentiles(b, "kill-to-return", lat)
	// The first task ran in the pool's first child, each later one in the
	// replacement of the one killed before.
	if s := p.Stats(); s.Started != int64(b.N) {
		b.Errorf("%d children started for %d kills", s.Started, b.N)
	}
}

// BenchmarkRedisTerminateLatency measures, on Redis, the time from the
// start of a terminate revoke (store write, publish) until the isolated
// task's child saw its context cancelled: the isolated counterpart of the
// root package's BenchmarkRedisTerminateLatency.
func BenchmarkRedisTerminateLatency(b *testing.B) {
	url := needRedis(b)
	ns := "bench-iso-term-" + stem.NewTaskID()[:8]
	testutil.CleanupNamespace(b, url, ns)
	ctx := context.Background()
	opts := stemdriver.Options{Namespace: ns, Logger: quietLogger()}
	reg := testRegistry()
	cancelled := make(chan int64, 1)
	logger := slog.New(&captureHandler{msg: "bench: context cancelled", key: "cancelled_at", out: cancelled})
	p := newPool(b, isolated.PoolConfig{Registry: reg, Size: 1, Logger: logger})

	br, err := stemredis.OpenBroker(ctx, url, opts)
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	ctl, err := stemredis.OpenControl(ctx, url, opts)
	if err != nil {
		b.Fatal(err)
	}
	defer ctl.Close()
	rev, err := stemredis.OpenRevokes(ctx, url, opts)
	if err != nil {
		b.Fatal(err)
	}
	defer rev.Close()
	started := make(chan struct{}, 1)
	w, err := stem.NewWorker(stem.WorkerConfig{ID: "w0", Namespace: ns, Registry: reg, Broker: br, Control: ctl, Revokes: rev,
		Executor: startSignal{p, started}, Logger: quietLogger(), ClaimWait: 100 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- w.Run(wctx) }()
	defer func() { stop(); <-done }()
	<-w.Ready()
	controller, _ := stem.NewController(stem.ControllerConfig{Namespace: ns, Control: ctl, Revokes: rev})
	client, _ := stem.NewClient(stem.ClientConfig{Broker: br})

	var lat []time.Duration
	for b.Loop() {
		b.StopTimer()
		id, err := client.Enqueue(ctx, "test.log-cancel", nil, stem.EnqueueOptions{})
		if err != nil {
			b.Fatal(err)
		}
		<-started
		b.StartTimer()
		t0 := time.Now()
		if _, err := controller.Revoke(ctx, stem.Target{Workers: []string{"w0"}}, stem.RevokeOptions{TaskIDs: []string{id}, Terminate: true}); err != nil {
			b.Fatal(err)
		}
		at := <-cancelled
		lat = append(lat, time.Unix(0, at).Sub(t0))
	}
	reportPercentiles(b, "revoke-to-child-cancel", lat)
}

// startSignal is an Executor that announces each task once its child
// reported a first checkpoint.
type startSignal struct {
	p       *isolated.Pool
	started chan struct{}
}

func (s startSignal) Execute(tc *stem.TaskContext, task *stem.Task, env *stemtype.Envelope, kill stem.KillSignal) (json.RawMessage, error) {
	ctx, cancel := context.WithCancelCause(tc)
	defer cancel(nil)
	var once sync.Once
	inner := stem.NewTaskContext(ctx, stem.TaskInfo{ID: tc.TaskID(), Task: tc.TaskName(), Queue: tc.Queue(), Attempt: tc.Attempt()},
		onFirst{tc: tc, f: func() { once.Do(func() { s.started <- struct{}{} }) }}, nil)
	return s.p.Execute(inner, task, env, kill)
}

// onFirst relays checkpoints to tc, calling f on each.
type onFirst struct {
	tc *stem.TaskContext
	f  func()
}

func (o onFirst) Heartbeat() error { o.f(); return o.tc.Heartbeat() }
func (o onFirst) ExtendLease(d time.Duration) error {
	o.f()
	return o.tc.ExtendLease(d)
}
func (o onFirst) Progress(pct float64, data json.RawMessage) error {
	o.f()
	return o.tc.Progress(pct, data)
}

// captureHandler sends the value of attribute key of records with message
// msg to out; it drops everything else.
type captureHandler struct {
	msg, key string
	out      chan<- int64
}

func (h *captureHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *captureHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *captureHandler) WithGroup(string) slog.Handler            { return h }
func (h *captureHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message != h.msg {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == h.key {
			var n int64
			switch v := a.Value.Any().(type) {
			case float64:
				n = int64(v)
			case string:
				n, _ = strconv.ParseInt(v, 10, 64)
			}
			h.out <- n
			return false
		}
		return true
	})
	return nil
}

func reportPercentiles(b *testing.B, name string, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	p := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Nanoseconds()) / 1e3 }
	b.ReportMetric(p(0.5), name+"-p50-µs")
	b.ReportMetric(p(0.99), name+"-p99-µs")
}
