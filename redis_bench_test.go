package stem_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemredis"
)

// redisWorkers starts n workers on Redis in namespace ns, each with its own
// connections, as separate processes would have.
func redisWorkers(b *testing.B, url, ns string, n int, reg *stem.Registry) {
	ctx := context.Background()
	opts := stemdriver.Options{Namespace: ns, Logger: quiet()}
	var wg sync.WaitGroup
	wctx, cancel := context.WithCancel(ctx)
	for i := range n {
		br, err := stemredis.OpenBroker(ctx, url, opts)
		if err != nil {
			b.Fatal(err)
		}
		ctl, err := stemredis.OpenControl(ctx, url, opts)
		if err != nil {
			b.Fatal(err)
		}
		rev, err := stemredis.OpenRevokes(ctx, url, opts)
		if err != nil {
			b.Fatal(err)
		}
		w, err := stem.NewWorker(stem.WorkerConfig{ID: fmt.Sprintf("w%d", i), Namespace: ns, Registry: reg,
			Broker: br, Control: ctl, Revokes: rev, Logger: quiet(), ClaimWait: 100 * time.Millisecond})
		if err != nil {
			b.Fatal(err)
		}
		wg.Go(func() {
			_ = w.Run(wctx)
			br.Close()
			ctl.Close()
			rev.Close()
		})
		<-w.Ready()
	}
	b.Cleanup(func() { cancel(); wg.Wait() })
}

func controller(b *testing.B, url, ns string) *stem.Controller {
	ctx := context.Background()
	opts := stemdriver.Options{Namespace: ns, Logger: quiet()}
	ctl, err := stemredis.OpenControl(ctx, url, opts)
	if err != nil {
		b.Fatal(err)
	}
	rev, err := stemredis.OpenRevokes(ctx, url, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ctl.Close(); rev.Close() })
	c, _ := stem.NewController(stem.ControllerConfig{Namespace: ns, Control: ctl, Revokes: rev})
	return c
}

// BenchmarkRedisControlPing measures a broadcast ping's round trip until
// every live worker replied, with 1 and 10 workers.
func BenchmarkRedisControlPing(b *testing.B) {
	url := testutil.NeedRedis(b)
	for _, n := range []int{1, 10} {
		b.Run(fmt.Sprintf("workers=%d", n), func(b *testing.B) {
			ns := "bench-ping-" + stem.NewTaskID()[:8]
			redisWorkers(b, url, ns, n, stem.NewRegistry())
			c := controller(b, url, ns)
			var lat []time.Duration
			b.ResetTimer()
			for b.Loop() {
				start := time.Now()
				r, err := c.Ping(context.Background(), stem.Target{Timeout: 5 * time.Second})
				if err != nil || len(r.Replies) != n {
					b.Fatalf("ping: %d replies, %v", len(r.Replies), err)
				}
				lat = append(lat, time.Since(start))
			}
			reportPercentiles(b, lat)
		})
	}
}

// BenchmarkRedisTerminateLatency measures the time from the start of a
// `revoke --terminate` (store write, publish) until the running task's
// context is cancelled.
func BenchmarkRedisTerminateLatency(b *testing.B) {
	url := testutil.NeedRedis(b)
	ns := "bench-term-" + stem.NewTaskID()[:8]
	reg := stem.NewRegistry()
	started := make(chan string, 1)
	cancelled := make(chan time.Time, 1)
	stem.Register(reg, "spin", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		started <- tc.TaskID()
		<-tc.Done()
		cancelled <- time.Now()
		return nil, tc.Heartbeat()
	}, stem.TaskOptions{})
	redisWorkers(b, url, ns, 1, reg)
	c := controller(b, url, ns)
	ctx := context.Background()
	br, err := stemredis.OpenBroker(ctx, url, stemdriver.Options{Namespace: ns})
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	client, _ := stem.NewClient(stem.ClientConfig{Broker: br})
	var lat []time.Duration
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		if _, err := client.Enqueue(ctx, "spin", nil, stem.EnqueueOptions{}); err != nil {
			b.Fatal(err)
		}
		id := <-started
		b.StartTimer()
		start := time.Now()
		if _, err := c.Revoke(ctx, stem.Target{Workers: []string{"w0"}}, stem.RevokeOptions{TaskIDs: []string{id}, Terminate: true}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, (<-cancelled).Sub(start))
	}
	reportPercentiles(b, lat)
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	p := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(p(0.5), "p50-µs")
	b.ReportMetric(p(0.99), "p99-µs")
}

// BenchmarkRedisEnqueueLatency measures one Enqueue call's latency, with a
// result backend on the broker's Redis (one round trip a group commit), for
// 1 producer (a lone caller stores at once) and 8 producers calling at the
// same time (their calls coalesced into group commits): the group commit
// must not raise a caller's latency by more than a fraction of a
// millisecond.
func BenchmarkRedisEnqueueLatency(b *testing.B) {
	url := testutil.NeedRedis(b)
	for _, producers := range []int{1, 8} {
		b.Run(fmt.Sprintf("producers=%d", producers), func(b *testing.B) {
			ctx := context.Background()
			ns := "bench-enq-" + stem.NewTaskID()[:8]
			testutil.CleanupNamespace(b, url, ns)
			opts := stemdriver.Options{Namespace: ns, Logger: quiet()}
			br, err := stemredis.OpenBroker(ctx, url, opts)
			if err != nil {
				b.Fatal(err)
			}
			res, err := stemredis.OpenResults(ctx, url, opts)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { br.Close(); res.Close() })
			client, err := stem.NewClient(stem.ClientConfig{Broker: br, Results: res})
			if err != nil {
				b.Fatal(err)
			}
			lats := make([][]time.Duration, producers)
			var next atomic.Int64
			b.ResetTimer()
			var wg sync.WaitGroup
			for p := range producers {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						start := time.Now()
						if _, err := client.Enqueue(ctx, "noop", stem.Args(`{"n":1}`), stem.EnqueueOptions{}); err != nil {
							b.Error(err)
							return
						}
						lats[p] = append(lats[p], time.Since(start))
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
			reportPercentiles(b, slices.Concat(lats...))
		})
	}
}
