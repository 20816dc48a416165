package stemtest

import (
	"context"
	"log/slog"
	"sync"
	"testing"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemtype"
)

// Namespace is the namespace of the in-memory backend of every Worker.
const Namespace = "stemtest"

// Worker is a real stem.Worker running on an in-memory backend of its own,
// with a Client and a Controller on the same backend, that a test drives:
// enqueue tasks, then wait for their final states. Nothing is shared
// between two Workers, so parallel tests cannot see each other's tasks.
type Worker struct {
	t      testing.TB
	worker *stem.Worker
	client *stem.Client
	ctl    *stem.Controller

	mu  sync.Mutex
	ids []string // enqueued through Enqueue, in order
}

// NewWorker starts a worker that runs the tasks of reg, and returns once it
// is ready: it takes commands (ping, revoke, terminate) and claims tasks.
// cfg tunes the worker (ID, Queues, Concurrency, Executor for isolated
// tasks, Lease, ShutdownTimeout, Logger...) as stem.NewWorker documents;
// NewWorker supplies its Registry, Namespace and drivers, so those fields
// must be left zero. The logger defaults to one that writes warnings and
// errors to the test's output.
//
// The worker stops when the test ends (t.Cleanup), with a warm shutdown; a
// worker that fails, then or earlier, fails the test.
func NewWorker(t testing.TB, reg *stem.Registry, cfg stem.WorkerConfig) *Worker {
	t.Helper()
	if cfg.Registry != nil || cfg.Namespace != "" || cfg.Broker != nil || cfg.Results != nil ||
		cfg.Revokes != nil || cfg.Control != nil {
		t.Fatal("stemtest: NewWorker sets WorkerConfig's Registry, Namespace, Broker, Results, Revokes and Control: leave them zero")
	}
	if cfg.ID == "" {
		cfg.ID = "stemtest-worker"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: Namespace, Logger: cfg.Logger}
	cfg.Registry, cfg.Namespace = reg, Namespace
	cfg.Broker, cfg.Results, cfg.Revokes, cfg.Control = hub.Broker(opts), hub.Results(opts), hub.Revokes(), hub.Control(opts)

	w, err := stem.NewWorker(cfg)
	if err != nil {
		t.Fatalf("stemtest: %v", err)
	}
	client, err := stem.NewClient(stem.ClientConfig{Broker: cfg.Broker, Results: cfg.Results, Registry: reg, Logger: cfg.Logger})
	if err != nil {
		t.Fatalf("stemtest: %v", err)
	}
	ctl, err := stem.NewController(stem.ControllerConfig{Namespace: Namespace, Control: cfg.Control,
		Revokes: cfg.Revokes, Results: cfg.Results, Logger: cfg.Logger})
	if err != nil {
		t.Fatalf("stemtest: %v", err)
	}

	ctx, stop := context.WithCancel(context.WithoutCancel(t.Context()))
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("stemtest: worker %s: %v", cfg.ID, err)
		}
	})
	select {
	case <-w.Ready():
	case err := <-done:
		done <- err // for the cleanup
		t.Fatalf("stemtest: worker %s did not start: %v", cfg.ID, err)
	case <-t.Context().Done():
		t.Fatalf("stemtest: worker %s did not start before the test ended", cfg.ID)
	}
	return &Worker{t: t, worker: w, client: client, ctl: ctl}
}

// Client returns a client of the worker's backend, with the registry's
// task defaults.
func (w *Worker) Client() *stem.Client { return w.client }

// Controller returns a controller of the worker's backend, to ping, inspect
// and revoke or terminate its tasks.
func (w *Worker) Controller() *stem.Controller { return w.ctl }

// Worker returns the running stem.Worker.
func (w *Worker) Worker() *stem.Worker { return w.worker }

// Enqueue enqueues a task as stem.Client.Enqueue does and returns its id;
// an error fails the test. Drain waits for every task enqueued here.
func (w *Worker) Enqueue(task string, args any, opts stem.EnqueueOptions) string {
	w.t.Helper()
	id, err := w.client.Enqueue(w.t.Context(), task, args, opts)
	if err != nil {
		w.t.Fatalf("stemtest: enqueue %s: %v", task, err)
	}
	w.mu.Lock()
	w.ids = append(w.ids, id)
	w.mu.Unlock()
	return id
}

// Wait waits until the task id reached a final state (succeeded, failed or
// cancelled) and returns its result. A task that is retried is waited for
// through its retries, so give tasks a short TaskOptions.RetryPolicy in
// tests. It fails the test when the test's context ends first.
func (w *Worker) Wait(id string) *stemtype.TaskResult {
	w.t.Helper()
	res, err := w.client.Wait(w.t.Context(), id)
	if err != nil {
		w.t.Fatalf("stemtest: wait for task %s: %v", id, err)
	}
	return res
}

// Drain waits until every task enqueued through Enqueue reached a final
// state, and returns their results in the order they were enqueued.
func (w *Worker) Drain() []*stemtype.TaskResult {
	w.t.Helper()
	w.mu.Lock()
	ids := append([]string(nil), w.ids...)
	w.mu.Unlock()
	out := make([]*stemtype.TaskResult, len(ids))
	for i, id := range ids {
		out[i] = w.Wait(id)
	}
	return out
}
