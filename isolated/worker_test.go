package isolated_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/isolated"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemtype"
)

// TestWorkerOutcomes runs isolated tasks through a real worker on the
// in-memory backend: the worker classifies their outcomes as it does for
// inline tasks, because NoRetry, RetryAfter and the time limit survive the
// trip through the child.
func TestWorkerOutcomes(t *testing.T) {
	t.Parallel()
	reg := testRegistry()
	logger, _ := testLogger(t)
	p := newPool(t, isolated.PoolConfig{Registry: reg, Size: 2, Logger: logger})
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "outcomes"}
	broker, results := hub.Broker(opts), hub.Results(opts)
	client, _ := stem.NewClient(stem.ClientConfig{Broker: broker, Results: results, Registry: reg})
	w, err := stem.NewWorker(stem.WorkerConfig{Registry: reg, Broker: broker, Results: results, Namespace: "outcomes",
		Concurrency: 2, Executor: p, Logger: logger, ClaimWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	defer func() { stop(); <-done }()

	three := 3
	for _, tc := range []struct {
		task     string
		opts     stem.EnqueueOptions
		state    stemtype.State
		attempt  int
		kind     string
		contains string
	}{
		{task: "test.echo", state: stemtype.StateSucceeded},
		{task: "test.noretry", opts: stem.EnqueueOptions{MaxRetries: &three}, state: stemtype.StateFailed, kind: "handler", contains: "hopeless"},
		{task: "test.retry-after", state: stemtype.StateSucceeded, attempt: 1},
		{task: "test.spin-limited", state: stemtype.StateFailed, kind: "time_limit", contains: "time limit"},
		{task: "test.exit", state: stemtype.StateFailed, kind: "handler", contains: "exit status 3"},
		{task: "test.panic", state: stemtype.StateFailed, kind: "panic", contains: "boom"},
	} {
		id, err := client.Enqueue(ctx, tc.task, nil, tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, waitTimeout)
		res, err := client.Wait(wctx, id)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", tc.task, err)
		}
		if res.State != tc.state || res.Attempt != tc.attempt {
			t.Errorf("%s: %s at attempt %d (%+v), want %s at attempt %d", tc.task, res.State, res.Attempt, res.Error, tc.state, tc.attempt)
		}
		if tc.kind != "" && (res.Error == nil || res.Error.Kind != tc.kind || !strings.Contains(res.Error.Message, tc.contains)) {
			t.Errorf("%s: error %+v, want kind %s mentioning %q", tc.task, res.Error, tc.kind, tc.contains)
		}
	}
	// The tasks ran one after the other: the first child ran them up to the
	// time limit, which killed it; a fresh one ran test.exit and died; a
	// third ran test.panic and died.
	if s := p.Stats(); s.Started != 3 || s.Live != 0 {
		t.Errorf("pool stats = %+v, want 3 children started, none left", s)
	}
}
