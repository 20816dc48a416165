package stemmetrics_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemmetrics"
	"github.com/stem-go/stem/stemtype"
)

// gatedRevokes holds the worker's first List of the revoke store until
// the test opens the gate.
type gatedRevokes struct {
	stemdriver.RevokeStore
	listing chan struct{} // closed by the first List
	gate    chan struct{}
	first   bool
}

func (g *gatedRevokes) List(ctx context.Context, ns string) ([]stemtype.RevokeRecord, error) {
	if !g.first {
		g.first = true // the worker's start-up load, on Run's goroutine
		close(g.listing)
		<-g.gate
	}
	return g.RevokeStore.List(ctx, ns)
}

func status(t *testing.T, h http.Handler, path string) int {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code
}

// /readyz answers 503 until the worker loaded its revoke set, 200 while it
// runs, 503 once it stops; /healthz answers 200 throughout; /metrics
// counts runs by task and state.
func TestReadyOnlyOnceRevokesLoaded(t *testing.T) {
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "metrics", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	reg := stem.NewRegistry()
	stem.Register(reg, "echo", func(_ *stem.TaskContext, a stem.Args) (any, error) { return a, nil }, stem.TaskOptions{})
	revokes := &gatedRevokes{RevokeStore: hub.Revokes(), listing: make(chan struct{}), gate: make(chan struct{})}
	m := stemmetrics.New()
	w, err := stem.NewWorker(stem.WorkerConfig{Namespace: "metrics", Registry: reg, Broker: hub.Broker(opts),
		Results: hub.Results(opts), Revokes: revokes, Control: hub.Control(opts), Observer: m, Logger: opts.Logger})
	if err != nil {
		t.Fatal(err)
	}
	h := m.Handler()
	ctx, cancel := context.WithCancel(context.Background())
	m.Watch(ctx, w)
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	<-revokes.listing
	if got := status(t, h, "/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz while the revoke set loads = %d, want 503", got)
	}
	if got := status(t, h, "/healthz"); got != http.StatusOK {
		t.Errorf("/healthz = %d", got)
	}
	close(revokes.gate)
	select {
	case <-w.Ready():
	case err := <-done:
		t.Fatalf("worker stopped: %v", err)
	}
	if got := status(t, h, "/readyz"); got != http.StatusOK {
		t.Errorf("/readyz of a started worker = %d, want 200", got)
	}

	client, err := stem.NewClient(stem.ClientConfig{Broker: hub.Broker(opts), Results: hub.Results(opts)})
	if err != nil {
		t.Fatal(err)
	}
	id, err := client.Enqueue(ctx, "echo", 1, stem.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Wait(ctx, id); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Run returned: the run was counted, and ctx ended.
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if !strings.Contains(rec.Body.String(), `stem_tasks_total{state="succeeded",task="echo"} 1`) {
		t.Errorf("/metrics does not count the run:\n%s", rec.Body.String())
	}
	if got := status(t, h, "/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz after the worker stopped = %d, want 503", got)
	}
}
