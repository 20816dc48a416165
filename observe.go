package stem

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/stem-go/stem/stemtype"
)

// Observer receives a worker's events, for metrics (package stemmetrics
// implements one for Prometheus). Its methods are called on the worker's
// own goroutines, on the path of every task: they must be quick, must not
// block, and must be safe for concurrent use. A worker without one
// (WorkerConfig.Observer nil) makes no call and pays nothing.
type Observer interface {
	// TaskStarted: a claimed task starts running, after waiting wait
	// since it was due (published, or its NotBefore for a delayed task or
	// a retry).
	TaskStarted(task, queue string, wait time.Duration)
	// TaskEnded: a run ended in state, one of succeeded, failed, retry
	// (failed, to run again) and cancelled (revoked), after running for
	// run. A run released to the broker (shutdown, a lost lease) is not
	// reported: it ends elsewhere.
	TaskEnded(task, queue string, state stemtype.State, run time.Duration)
	// RevokesApplied: n revoke records were newly applied to the worker's
	// revoke set, from a control command or a re-sync from the store.
	RevokesApplied(n int)
	// ControlServed: the worker answered a control command of type
	// command (ping, inspect, stats, revoke, ...), ok or with an error.
	ControlServed(command string, ok bool)
	// LeaseRenewed: a lease was renewed. LeaseLost: the broker said a
	// lease was lost (another worker may run the task).
	LeaseRenewed()
	LeaseLost()
}

// Gauges are a worker's current levels, read by Worker.Gauges.
type Gauges struct {
	// Inflight is how many tasks run; Prefetched how many were claimed
	// and wait for a free slot.
	Inflight, Prefetched int
	// RevokesHeld is how many revoke records the worker holds.
	RevokesHeld int
}

// Gauges returns the worker's current levels. It is safe to call at any
// time, from any goroutine.
func (w *Worker) Gauges() Gauges {
	running, waiting := w.jobs.Counts()
	return Gauges{Inflight: running, Prefetched: waiting, RevokesHeld: w.revokes.Len()}
}

// traceContext is the propagation format of span contexts in envelope
// headers: W3C Trace Context (headers traceparent and tracestate),
// whatever the program's global propagator, so that producers and
// workers of any configuration agree.
var traceContext propagation.TraceContext

// injectTrace adds the span context of ctx, when it has a valid one, to
// headers (a new map when headers is nil or shared with the caller), and
// returns them.
func injectTrace(ctx context.Context, headers map[string]string) map[string]string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return headers
	}
	out := make(map[string]string, len(headers)+2)
	for k, v := range headers {
		out[k] = v
	}
	traceContext.Inject(ctx, propagation.MapCarrier(out))
	return out
}

// tracerName is the instrumentation scope of the worker's spans.
const tracerName = "github.com/stem-go/stem"

// startRunSpan starts the span of one run of env on ctx, the child of the
// producer's span when the envelope carries one.
func (w *Worker) startRunSpan(ctx context.Context, env *stemtype.Envelope) (context.Context, trace.Span) {
	if len(env.Headers) > 0 {
		ctx = traceContext.Extract(ctx, propagation.MapCarrier(env.Headers))
	}
	return w.tracer.Start(ctx, "stem.run "+env.Task, trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("stem.task.id", env.ID),
			attribute.String("stem.task.name", env.Task),
			attribute.Int("stem.task.attempt", env.Attempt),
			attribute.String("stem.queue", env.Queue),
			attribute.String("stem.worker.id", w.cfg.ID),
		))
}

// endRunSpan ends a run's span with the run's outcome.
func endRunSpan(span trace.Span, state stemtype.State, terr *stemtype.TaskError) {
	span.SetAttributes(attribute.String("stem.task.state", string(state)))
	if terr != nil && state != stemtype.StateSucceeded {
		span.SetStatus(codes.Error, terr.Message)
	}
	span.End()
}
