package stem_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemtype"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// env is one in-memory deployment: a hub, its drivers and a client.
type env struct {
	t       *testing.T
	hub     *stemmem.Hub
	ns      string
	broker  stemdriver.Broker
	results stemdriver.ResultBackend
	revokes stemdriver.RevokeStore
	control stemdriver.ControlTransport
	client  *stem.Client
	reg     *stem.Registry
}

func newEnv(t *testing.T) *env {
	t.Helper()
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "test", Logger: quiet()}
	e := &env{t: t, hub: hub, ns: "test", broker: hub.Broker(opts), results: hub.Results(opts),
		revokes: hub.Revokes(), control: hub.Control(opts), reg: stem.NewRegistry()}
	var err error
	e.client, err = stem.NewClient(stem.ClientConfig{Broker: e.broker, Results: e.results, Registry: e.reg})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func quiet() *slog.Logger {
	if os.Getenv("STEM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startWorker runs a worker until the test ends (or stop is called) and
// returns it with a stop function that waits for Run to return.
func (e *env) startWorker(cfg stem.WorkerConfig) (*stem.Worker, func()) {
	e.t.Helper()
	w := e.newWorker(cfg)
	return w, systemtest.RunWorker(e.t, w)
}

// newWorker builds a worker over e's drivers, with cfg's other settings
// and quick defaults for tests.
func (e *env) newWorker(cfg stem.WorkerConfig) *stem.Worker {
	e.t.Helper()
	return systemtest.NewWorker(e.t, e.ns, e.reg,
		systemtest.Roles{Broker: e.broker, Results: e.results, Revokes: e.revokes, Control: e.control}, cfg)
}

func (e *env) enqueue(task string, args any, opts stem.EnqueueOptions) string {
	e.t.Helper()
	id, err := e.client.Enqueue(context.Background(), task, args, opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

func (e *env) wait(id string) *stemtype.TaskResult {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := e.client.Wait(ctx, id)
	if err != nil {
		e.t.Fatalf("wait for %s: %v", id, err)
	}
	return res
}

func (e *env) controller() *stem.Controller {
	c, err := stem.NewController(stem.ControllerConfig{Namespace: e.ns, Control: e.control, Revokes: e.revokes, Results: e.results})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}
