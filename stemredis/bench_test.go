package stemredis

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemdriver/stemdrivertest"
	"github.com/stem-go/stem/stemtype"
)

// roundTrips is a go-redis hook that counts round trips: one per command
// sent alone, one per pipeline (a MULTI/EXEC transaction included).
type roundTrips struct{ n atomic.Int64 }

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.n.Add(1)
		return next(ctx, cmd)
	}
}

func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		r.n.Add(1)
		return next(ctx, cmds)
	}
}

// take returns the count and resets it.
func (r *roundTrips) take() int64 { return r.n.Swap(0) }

func benchEnvelopes(prefix string, n int) []*stemtype.Envelope {
	out := make([]*stemtype.Envelope, n)
	now := time.Now().UTC()
	for i := range out {
		out[i] = &stemtype.Envelope{
			ID:        fmt.Sprintf("%s-%d", prefix, i),
			Task:      "bench.noop",
			Args:      json.RawMessage(`{"n":1}`),
			Queue:     "bench",
			CreatedAt: now,
		}
	}
	return out
}

func benchBroker(b *testing.B) (*Broker, *roundTrips) {
	ns := newNS(b)
	br := openTestBroker(b, ns)
	rt := &roundTrips{}
	br.rdb.AddHook(rt)
	br.pub.AddHook(rt)
	return br, rt
}

// BenchmarkPublishBatch publishes b.N envelopes in batches of 500.
func BenchmarkPublishBatch(b *testing.B) {
	br, rt := benchBroker(b)
	ctx := context.Background()
	envs := benchEnvelopes("p", b.N)
	rt.take()
	b.ResetTimer()
	for start := 0; start < b.N; start += 500 {
		if err := br.Publish(ctx, envs[start:min(start+500, b.N)]...); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(rt.take())/float64(b.N), "roundtrips/task")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
}

// BenchmarkClaimAckDrain drains b.N published no-op envelopes with one
// consumer claiming 200 at a time and acknowledging each batch at once.
func BenchmarkClaimAckDrain(b *testing.B) {
	br, rt := benchBroker(b)
	ctx := context.Background()
	envs := benchEnvelopes("d", b.N)
	for start := 0; start < b.N; start += 1000 {
		if err := br.Publish(ctx, envs[start:min(start+1000, b.N)]...); err != nil {
			b.Fatal(err)
		}
	}
	rt.take()
	var claimRT, ackRT int64
	b.ResetTimer()
	for done := 0; done < b.N; {
		ds, err := br.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"bench"}, Consumer: "c", Max: 200, Lease: time.Minute, Wait: time.Second})
		if err != nil {
			b.Fatal(err)
		}
		claimRT += rt.take()
		if err := br.Ack(ctx, ds...); err != nil {
			b.Fatal(err)
		}
		ackRT += rt.take()
		done += len(ds)
	}
	b.StopTimer()
	b.ReportMetric(float64(claimRT)/float64(b.N), "claim-roundtrips/task")
	b.ReportMetric(float64(ackRT)/float64(b.N), "ack-roundtrips/task")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
}

// BenchmarkWorkerLoop runs what a worker does per no-op task, with
// consumers concurrent consumers: claim a batch (Max 100), write each
// task's result in one Put of the batch, acknowledge the batch. It reports
// the round trips of each step per task.
func BenchmarkWorkerLoop(b *testing.B) {
	for _, consumers := range []int{1, 4} {
		b.Run(fmt.Sprintf("consumers=%d", consumers), func(b *testing.B) {
			ns := newNS(b)
			producer := openTestBroker(b, ns)
			ctx := context.Background()
			envs := benchEnvelopes("w", b.N)
			for start := 0; start < b.N; start += 1000 {
				if err := producer.Publish(ctx, envs[start:min(start+1000, b.N)]...); err != nil {
					b.Fatal(err)
				}
			}
			var claimRT, resultRT, ackRT, left atomic.Int64
			left.Store(int64(b.N))
			brokers := make([]*Broker, consumers)
			results := make([]*Results, consumers)
			for i := range brokers {
				brokers[i] = openTestBroker(b, ns)
				results[i] = openTestResults(b, ns, "")
			}
			b.ResetTimer()
			var wg sync.WaitGroup
			for i := range consumers {
				br, res := brokers[i], results[i]
				brt, rrt := &roundTrips{}, &roundTrips{}
				br.rdb.AddHook(brt)
				br.pub.AddHook(brt)
				res.rdb.AddHook(rrt)
				wg.Go(func() {
					for left.Load() > 0 {
						ds, err := br.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"bench"}, Consumer: fmt.Sprintf("c%d", i), Max: 100, Lease: time.Minute, Wait: 50 * time.Millisecond})
						if err != nil {
							b.Error(err)
							return
						}
						claimRT.Add(brt.take())
						if len(ds) == 0 {
							continue
						}
						rs := make([]*stemtype.TaskResult, len(ds))
						now := time.Now().UTC()
						for j, d := range ds {
							rs[j] = &stemtype.TaskResult{ID: d.Envelope.ID, Task: d.Envelope.Task, Queue: d.Queue, State: stemtype.StateSucceeded, Result: json.RawMessage(`null`), FinishedAt: now, UpdatedAt: now}
						}
						if err := res.Put(ctx, rs...); err != nil {
							b.Error(err)
							return
						}
						resultRT.Add(rrt.take())
						if err := br.Ack(ctx, ds...); err != nil {
							b.Error(err)
							return
						}
						ackRT.Add(brt.take())
						left.Add(-int64(len(ds)))
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			n := float64(b.N)
			b.ReportMetric(float64(claimRT.Load())/n, "claim-roundtrips/task")
			b.ReportMetric(float64(resultRT.Load())/n, "result-roundtrips/task")
			b.ReportMetric(float64(ackRT.Load())/n, "ack-roundtrips/task")
			b.ReportMetric(n/b.Elapsed().Seconds(), "tasks/s")
		})
	}
}

// BenchmarkResultPut writes b.N results, one Put per result and in batches
// of 200.
func BenchmarkResultPut(b *testing.B) {
	for _, batch := range []int{1, 200} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			r := openTestResults(b, newNS(b), "")
			rt := &roundTrips{}
			r.rdb.AddHook(rt)
			ctx := context.Background()
			now := time.Now().UTC()
			rs := make([]*stemtype.TaskResult, b.N)
			for i := range rs {
				rs[i] = &stemtype.TaskResult{ID: fmt.Sprintf("r%d", i), Task: "bench.noop", State: stemtype.StateSucceeded, UpdatedAt: now}
			}
			b.ResetTimer()
			for start := 0; start < b.N; start += batch {
				if err := r.Put(ctx, rs[start:min(start+batch, b.N)]...); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(rt.take())/float64(b.N), "roundtrips/task")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
		})
	}
}

// BenchmarkRevokeUpsert writes b.N revoke records in batches of 100.
func BenchmarkRevokeUpsert(b *testing.B) {
	s := openTestRevokes(b)
	ns := newNS(b)
	ctx := context.Background()
	now := time.Now().UTC()
	recs := make([]stemtype.RevokeRecord, b.N)
	for i := range recs {
		recs[i] = stemtype.RevokeRecord{Namespace: ns, TaskID: fmt.Sprintf("t%d", i), Version: now.UnixMicro() + int64(i), IssuedAt: now, ExpiresAt: now.Add(time.Hour)}
	}
	b.ResetTimer()
	for start := 0; start < b.N; start += 100 {
		if _, err := s.Upsert(ctx, recs[start:min(start+100, b.N)]...); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkIdlePickup measures how long a message published to an idle
// queue takes to reach a consumer blocked in Claim on another connection
// (stemdrivertest.BenchIdlePickup).
func BenchmarkIdlePickup(b *testing.B) {
	ns := newNS(b)
	env := benchEnvelopes("idle", 1)[0]
	env.Queue = "idle"
	stemdrivertest.BenchIdlePickup(b, openTestBroker(b, ns), openTestBroker(b, ns), env)
}

// revokeCommandSize is about the size of a one-record revoke command.
const revokeCommandSize = 360

// BenchmarkRevokePublishRoundTrip measures what storing a revoke before
// publishing its command costs the command's trip to a subscriber: each
// call waits until a subscription on another connection has the message.
// "publish" is a bare PUBLISH (asynq's cancel, which stores nothing);
// "script-publish-only" is a script run with a revoke's keys and arguments
// that only publishes; "upsert-publish" is Control.UpsertPublish, the
// store write and the publish in one script run (Controller.Revoke on
// Redis). BENCHMARKS.md has the figures and the server's share of each
// (INFO commandstats).
func BenchmarkRevokePublishRoundTrip(b *testing.B) {
	ctx := context.Background()
	ns := newNS(b)
	opts := stemdriver.Options{Namespace: ns, Logger: slog.New(slog.DiscardHandler)}
	ctl, err := OpenControl(ctx, testutil.RedisURL(), opts)
	if err != nil {
		testutil.SkipOrFail(b, "Redis unreachable: %v", err)
	}
	b.Cleanup(func() { _ = ctl.Close() })
	rs := openTestRevokes(b)
	sub, err := ctl.Subscribe(ctx, "w1")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sub.Close() })
	msg := []byte(strings.Repeat("x", revokeCommandSize))
	now := time.Now().UTC()
	rec := func(i int) stemtype.RevokeRecord {
		return stemtype.RevokeRecord{Namespace: ns, TaskID: fmt.Sprintf("t%031d", i), Version: now.UnixMicro() + int64(i),
			IssuedAt: now, Terminate: true, Reason: "bench", ExpiresAt: now.Add(time.Hour)}
	}
	received := func(b *testing.B) {
		if _, ok := <-sub.C(); !ok {
			b.Fatal("subscription closed")
		}
	}
	b.Run("publish", func(b *testing.B) {
		for b.Loop() {
			if err := ctl.Publish(ctx, nil, msg); err != nil {
				b.Fatal(err)
			}
			received(b)
		}
	})
	b.Run("script-publish-only", func(b *testing.B) {
		publishOnly := newScript("redis.call('PUBLISH', ARGV[2], ARGV[3]) return 1")
		r := rec(0)
		recArgs, err := revokeArgs(&r)
		if err != nil {
			b.Fatal(err)
		}
		keys := newRevokeKeys(ns).upsertKeys()
		args := append([]any{1, broadcastChannel(ns, ctl.db), msg}, recArgs...)
		for b.Loop() {
			if err := publishOnly.run(ctx, ctl.rdb, keys, args...).Err(); err != nil {
				b.Fatal(err)
			}
			received(b)
		}
	})
	b.Run("upsert-publish", func(b *testing.B) {
		i := 0
		for b.Loop() {
			i++
			if _, published, err := ctl.UpsertPublish(ctx, rs, []stemtype.RevokeRecord{rec(i)}, nil, msg); err != nil || !published {
				b.Fatalf("UpsertPublish: published %v, %v", published, err)
			}
			received(b)
		}
	})
}
