package stem_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemredis"
)

// BenchmarkRedisFairLongTaskWait measures how long a long task waits to
// start while a slot is idle elsewhere (issue 16): each round starts two
// workers of concurrency 2 (default prefetch) on Redis, each with its own
// connections as separate processes would have, and enqueues four tasks of
// fairLongTask one after another. Four slots, four tasks: whatever a task
// waits beyond the dispatch itself, it waits while a slot is idle. With
// "warm", the workers first drain 40 no-op tasks, so that they have seen
// short tasks (and prefetch); "cold" starts with the long tasks. It reports
// the p50, p90, p99 and max of the waits (enqueue to handler start) over
// every task of every round, and the share of tasks that waited more than
// 50 ms (a sixth of a long task); run it with -benchtime Nx for N rounds.
func BenchmarkRedisFairLongTaskWait(b *testing.B) {
	url := testutil.NeedRedis(b)
	for _, warm := range []bool{false, true} {
		name := map[bool]string{false: "cold", true: "warm"}[warm]
		b.Run(name, func(b *testing.B) {
			var waits []time.Duration
			round := 0
			for b.Loop() {
				round++
				waits = append(waits, fairRound(b, url, fmt.Sprintf("bench-fair-%s-%d-%s", name, round, stem.NewTaskID()[:6]), warm)...)
			}
			slices.Sort(waits)
			pct := func(p float64) float64 {
				return float64(waits[min(len(waits)-1, int(p*float64(len(waits))))]) / float64(time.Millisecond)
			}
			over := 0
			for _, w := range waits {
				if w > fairLongTask/6 {
					over++
				}
			}
			b.ReportMetric(pct(0.5), "p50-wait-ms")
			b.ReportMetric(pct(0.9), "p90-wait-ms")
			b.ReportMetric(pct(0.99), "p99-wait-ms")
			b.ReportMetric(float64(waits[len(waits)-1])/float64(time.Millisecond), "max-wait-ms")
			b.ReportMetric(float64(over)/float64(len(waits))*100, "%over-50ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// fairLongTask is how long each long task of BenchmarkRedisFairLongTaskWait runs.
const fairLongTask = 300 * time.Millisecond

// fairRound runs one round of BenchmarkRedisFairLongTaskWait in namespace
// ns and returns the four long tasks' waits.
func fairRound(b *testing.B, url, ns string, warm bool) []time.Duration {
	ctx := context.Background()
	opts := stemdriver.Options{Namespace: ns, Logger: quiet()}
	var mu sync.Mutex
	startedAt := map[string]time.Time{}
	reg := stem.NewRegistry()
	stem.Register(reg, "noop", func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }, stem.TaskOptions{})
	stem.Register(reg, "long", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		mu.Lock()
		startedAt[tc.TaskID()] = time.Now()
		mu.Unlock()
		select {
		case <-time.After(fairLongTask): // the task's work
		case <-tc.Done():
		}
		return nil, nil
	}, stem.TaskOptions{})
	var closers []func() error
	defer func() {
		for _, c := range closers {
			_ = c()
		}
	}()
	openBroker := func() stemdriver.Broker {
		br, err := stemredis.OpenBroker(ctx, url, opts)
		if err != nil {
			b.Fatal(err)
		}
		closers = append(closers, br.Close)
		return br
	}
	results, err := stemredis.OpenResults(ctx, url, opts)
	if err != nil {
		b.Fatal(err)
	}
	closers = append(closers, results.Close)
	client, err := stem.NewClient(stem.ClientConfig{Broker: openBroker(), Results: results, Registry: reg})
	if err != nil {
		b.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	for i := range 2 {
		w, err := stem.NewWorker(stem.WorkerConfig{ID: fmt.Sprintf("w%d", i), Namespace: ns, Registry: reg,
			Broker: openBroker(), Results: results, Concurrency: 2, Logger: quiet(), ClaimWait: 100 * time.Millisecond})
		if err != nil {
			b.Fatal(err)
		}
		wg.Go(func() { _ = w.Run(wctx) })
		<-w.Ready()
	}
	waitAll := func(ids []string) {
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		for _, id := range ids {
			if _, err := client.Wait(wctx, id); err != nil {
				b.Fatal(err)
			}
		}
	}
	if warm {
		reqs := make([]stem.EnqueueRequest, 40)
		for i := range reqs {
			reqs[i] = stem.EnqueueRequest{Task: "noop"}
		}
		ids, err := client.EnqueueBatch(ctx, reqs)
		if err != nil {
			b.Fatal(err)
		}
		waitAll(ids)
	}
	enqueuedAt := map[string]time.Time{}
	var ids []string
	for range 4 {
		at := time.Now()
		id, err := client.Enqueue(ctx, "long", nil, stem.EnqueueOptions{})
		if err != nil {
			b.Fatal(err)
		}
		enqueuedAt[id] = at
		ids = append(ids, id)
	}
	waitAll(ids)
	mu.Lock()
	defer mu.Unlock()
	waits := make([]time.Duration, 0, len(ids))
	for _, id := range ids {
		waits = append(waits, startedAt[id].Sub(enqueuedAt[id]))
	}
	return waits
}
