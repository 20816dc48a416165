package stem_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemtype"
)

// The producer's span context travels in the envelope: the worker's span
// of the run is its child, in the same trace, with the task's id and
// attempt as attributes, and the run's logs carry the trace id. A task
// enqueued outside any span gets a root span; a retried task one span per
// run, each with its attempt.
func TestWorkerSpanIsTheProducersChild(t *testing.T) {
	e := newEnv(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	failed := map[string]bool{}
	stem.Register(e.reg, "traced", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		tc.Logger().Info("in the handler")
		if !trace.SpanFromContext(tc).SpanContext().IsValid() {
			return nil, stem.NoRetry(errors.New("the task's context carries no span"))
		}
		return "ok", nil
	}, stem.TaskOptions{})
	stem.Register(e.reg, "flaky", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		if !failed[tc.TaskID()] { // one runner: no race
			failed[tc.TaskID()] = true
			return nil, stem.RetryAfter(0, errors.New("first run fails"))
		}
		return "ok", nil
	}, stem.TaskOptions{MaxRetries: 1})

	ctx, producer := tp.Tracer("producer").Start(context.Background(), "produce")
	id := e.enqueue2(ctx, "traced")
	retried := e.enqueue2(ctx, "flaky")
	producer.End()
	root := e.enqueue2(context.Background(), "traced")

	var logs testutil.SyncBuffer
	_, stop := e.startWorker(stem.WorkerConfig{TracerProvider: tp, Concurrency: 1,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	for _, id := range []string{id, retried, root} {
		if r := e.wait(id); r.State != stemtype.StateSucceeded {
			t.Fatalf("task %s: %+v", id, r)
		}
	}
	stop() // every run's span has ended

	psc := producer.SpanContext()
	runs := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		if s.Name() == "produce" {
			continue
		}
		taskID := attr(s, "stem.task.id").AsString()
		runs[taskID] = append(runs[taskID], s)
		if s.SpanKind() != trace.SpanKindConsumer || !strings.HasPrefix(s.Name(), "stem.run ") {
			t.Errorf("span %q kind %v", s.Name(), s.SpanKind())
		}
	}
	if len(runs[id]) != 1 || len(runs[root]) != 1 || len(runs[retried]) != 2 {
		t.Fatalf("spans per task: %d, %d, %d; want 1, 1, 2", len(runs[id]), len(runs[root]), len(runs[retried]))
	}
	s := runs[id][0]
	if s.Parent().SpanID() != psc.SpanID() || s.SpanContext().TraceID() != psc.TraceID() || !s.Parent().IsRemote() {
		t.Errorf("worker span parent %v (trace %v), want the producer's span %v (trace %v)",
			s.Parent().SpanID(), s.SpanContext().TraceID(), psc.SpanID(), psc.TraceID())
	}
	if got := attr(s, "stem.task.attempt").AsInt64(); got != 0 {
		t.Errorf("attempt attribute = %d, want 0", got)
	}
	if got := attr(s, "stem.task.state").AsString(); got != "succeeded" {
		t.Errorf("state attribute = %q", got)
	}
	if r := runs[root][0]; r.Parent().IsValid() || r.SpanContext().TraceID() == psc.TraceID() {
		t.Errorf("a task enqueued outside a span got parent %v in trace %v", r.Parent().SpanID(), r.SpanContext().TraceID())
	}
	attempts := map[int64]string{}
	for _, r := range runs[retried] {
		attempts[attr(r, "stem.task.attempt").AsInt64()] = attr(r, "stem.task.state").AsString()
		if r.Parent().SpanID() != psc.SpanID() {
			t.Errorf("run of the retried task is not the producer's child: parent %v", r.Parent().SpanID())
		}
	}
	if attempts[0] != "retry" || attempts[1] != "succeeded" {
		t.Errorf("retried task's runs: %v, want attempt 0 retry, attempt 1 succeeded", attempts)
	}
	want := "trace_id=" + psc.TraceID().String()
	var inHandler []string
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "in the handler") {
			inHandler = append(inHandler, line)
		}
	}
	if len(inHandler) != 2 || !strings.Contains(inHandler[0]+inHandler[1], want) {
		t.Errorf("handler log lines do not carry %s:\n%s", want, strings.Join(inHandler, "\n"))
	}
}

func attr(s sdktrace.ReadOnlySpan, key string) attribute.Value {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// enqueue2 enqueues task with ctx, the producer's context.
func (e *env) enqueue2(ctx context.Context, task string) string {
	e.t.Helper()
	id, err := e.client.Enqueue(ctx, task, nil, stem.EnqueueOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}
