package systemtest

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
)

// DrainOnce is one op of a drain benchmark: with b's timer stopped, it
// enqueues n no-op tasks on broker (recording them in results) with
// EnqueueBatch; then, timed, it runs a worker built from cfg (Namespace,
// Registry, Broker and Results filled in) until all n ran, and stops it.
// It returns the drain's duration, for a tasks/s metric. The timer is
// left running, as b.Loop expects.
func DrainOnce(b *testing.B, broker stemdriver.Broker, results stemdriver.ResultBackend, ns string, n int, cfg stem.WorkerConfig) time.Duration {
	b.Helper()
	b.StopTimer()
	reg := stem.NewRegistry()
	var count atomic.Int64
	done := make(chan struct{})
	stem.Register(reg, "noop", func(*stem.TaskContext, stem.Args) (any, error) {
		if count.Add(1) == int64(n) {
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
	cfg.Namespace, cfg.Registry, cfg.Broker, cfg.Results = ns, reg, broker, results
	w, err := stem.NewWorker(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	b.StartTimer()
	start := time.Now()
	go func() { ran <- w.Run(ctx) }()
	<-done
	took := time.Since(start)
	cancel()
	if err := <-ran; err != nil {
		b.Fatal(err)
	}
	return took
}
