package stem_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
)

// BenchmarkWorkerDrainMemory measures the engine alone: one worker drains
// 5,000 no-op tasks from the memory backend (its start and shutdown
// included, the enqueue not). Compare ns/op and allocs/op between two
// commits on one machine; allocs/op is the steadier figure on a busy one.
func BenchmarkWorkerDrainMemory(b *testing.B) {
	const n = 5000
	for b.Loop() {
		b.StopTimer()
		hub := stemmem.New()
		opts := stemdriver.Options{Namespace: "bench", Logger: quiet()}
		broker, results := hub.Broker(opts), hub.Results(opts)
		reg := stem.NewRegistry()
		var count atomic.Int64
		done := make(chan struct{})
		stem.Register(reg, "noop", func(*stem.TaskContext, stem.Args) (any, error) {
			if count.Add(1) == n {
				close(done)
			}
			return nil, nil
		}, stem.TaskOptions{})
		client, err := stem.NewClient(stem.ClientConfig{Broker: broker, Results: results, Registry: reg})
		if err != nil {
			b.Fatal(err)
		}
		reqs := make([]stem.EnqueueRequest, n)
		for i := range reqs {
			reqs[i] = stem.EnqueueRequest{Task: "noop"}
		}
		if _, err := client.EnqueueBatch(context.Background(), reqs); err != nil {
			b.Fatal(err)
		}
		w, err := stem.NewWorker(stem.WorkerConfig{Namespace: "bench", Registry: reg, Broker: broker, Results: results,
			Logger: quiet(), ClaimWait: 10 * time.Millisecond})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		ran := make(chan struct{})
		b.StartTimer()
		var runErr error
		go func() { runErr = w.Run(ctx); close(ran) }()
		<-done
		cancel()
		<-ran
		if runErr != nil {
			b.Fatal(runErr)
		}
	}
}
