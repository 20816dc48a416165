// Package stemmetrics exports a stem worker's metrics to Prometheus and
// serves its health: `stem worker start --metrics-addr :9090` uses it, and
// a program that runs its own worker can too.
//
//	m := stemmetrics.New()
//	cfg.Observer = m
//	w, _ := stem.NewWorker(cfg)
//	m.Watch(ctx, w)
//	go http.ListenAndServe(":9090", m.Handler())
//
// The handler serves /metrics (the Prometheus text format), /healthz (200
// while the process serves) and /readyz (200 once the worker loaded its
// revoke set and started, 503 before and once it stops).
//
// Metrics, all prefixed stem_:
//
//	tasks_total{task,state}           runs ended, by task name and state:
//	                                  succeeded, failed, retry, cancelled
//	task_run_seconds{task}            run time histogram
//	task_queue_wait_seconds{queue}    time from due (published, or its
//	                                  countdown/ETA) to start, histogram
//	tasks_inflight                    tasks running
//	tasks_prefetched                  tasks claimed, waiting for a slot
//	revokes_held                      revoke records the worker holds
//	revokes_applied_total             revoke records newly applied
//	control_commands_total{command,status}  control commands answered
//	                                  (status ok or error)
//	lease_renewals_total              leases renewed
//	lease_losses_total                leases the broker said were lost
//
// with the Go runtime's and the process's collectors.
package stemmetrics

import (
	"context"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// Metrics is a stem.Observer that keeps a worker's metrics in a
// Prometheus registry of its own. Build it with New.
type Metrics struct {
	reg     *prometheus.Registry
	tasks   *prometheus.CounterVec
	run     *prometheus.HistogramVec
	wait    *prometheus.HistogramVec
	revokes prometheus.Counter
	control *prometheus.CounterVec
	renewed prometheus.Counter
	lost    prometheus.Counter

	watched atomic.Pointer[watched]
}

// watched is the worker Watch was given, and the end of its run.
type watched struct {
	w    *stem.Worker
	done <-chan struct{}
}

var _ stem.Observer = (*Metrics)(nil)

// buckets of the run time and queue wait histograms, in seconds: from a
// millisecond to an hour.
var buckets = []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600}

// New returns Metrics registered in a registry of their own, with the Go
// runtime's and the process's collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		tasks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "stem_tasks_total",
			Help: "Task runs ended, by task name and state (succeeded, failed, retry, cancelled)."}, []string{"task", "state"}),
		run: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "stem_task_run_seconds",
			Help: "Run time of tasks, by task name.", Buckets: buckets}, []string{"task"}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "stem_task_queue_wait_seconds",
			Help: "Time from a task's due time (published, or its countdown or ETA) to its start, by queue.", Buckets: buckets}, []string{"queue"}),
		revokes: prometheus.NewCounter(prometheus.CounterOpts{Name: "stem_revokes_applied_total",
			Help: "Revoke records newly applied to the worker's revoke set."}),
		control: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "stem_control_commands_total",
			Help: "Control commands answered, by command and status (ok, error)."}, []string{"command", "status"}),
		renewed: prometheus.NewCounter(prometheus.CounterOpts{Name: "stem_lease_renewals_total",
			Help: "Task leases renewed."}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{Name: "stem_lease_losses_total",
			Help: "Task leases the broker reported lost (another worker may run the task)."}),
	}
	gauge := func(name, help string, read func(stem.Gauges) int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			if ww := m.watched.Load(); ww != nil {
				return float64(read(ww.w.Gauges()))
			}
			return 0
		})
	}
	m.reg.MustRegister(m.tasks, m.run, m.wait, m.revokes, m.control, m.renewed, m.lost,
		gauge("stem_tasks_inflight", "Tasks running.", func(g stem.Gauges) int { return g.Inflight }),
		gauge("stem_tasks_prefetched", "Tasks claimed that wait for a free slot.", func(g stem.Gauges) int { return g.Prefetched }),
		gauge("stem_revokes_held", "Revoke records the worker holds.", func(g stem.Gauges) int { return g.RevokesHeld }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// Registry returns the registry the metrics are in, for a program that
// adds its own or serves them itself.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Watch reads the gauges (inflight, prefetched, revokes held) from w, and
// marks the metrics ready once w is (stem.Worker.Ready: its revoke set
// loaded) and not ready again once ctx ends (the worker stops).
func (m *Metrics) Watch(ctx context.Context, w *stem.Worker) {
	m.watched.Store(&watched{w: w, done: ctx.Done()})
}

// Ready reports whether the watched worker is ready: started, its revoke
// set loaded, and Watch's ctx not ended.
func (m *Metrics) Ready() bool {
	ww := m.watched.Load()
	if ww == nil {
		return false
	}
	select {
	case <-ww.done:
		return false
	default:
	}
	select {
	case <-ww.w.Ready():
		return true
	default:
		return false
	}
}

// Handler serves /metrics, /healthz and /readyz.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !m.Ready() {
			http.Error(w, "not ready: the worker has not loaded its revoke set, or it is stopping", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// TaskStarted observes the task's queue wait.
func (m *Metrics) TaskStarted(_, queue string, wait time.Duration) {
	m.wait.WithLabelValues(queue).Observe(max(wait, 0).Seconds())
}

// TaskEnded counts the run by state and observes its run time.
func (m *Metrics) TaskEnded(task, _ string, state stemtype.State, run time.Duration) {
	m.tasks.WithLabelValues(task, string(state)).Inc()
	m.run.WithLabelValues(task).Observe(run.Seconds())
}

// RevokesApplied counts revoke records applied.
func (m *Metrics) RevokesApplied(n int) { m.revokes.Add(float64(n)) }

// commands are the control command types counted by name; any other
// (a malformed or newer command) is counted as "other", so that a
// sender cannot grow the label set without bound.
var commands = []string{stemtype.CommandPing, stemtype.CommandInspect, stemtype.CommandStats, stemtype.CommandRevoke,
	"shutdown", "pause", "resume"}

// ControlServed counts an answered control command.
func (m *Metrics) ControlServed(command string, ok bool) {
	if !slices.Contains(commands, command) {
		command = "other"
	}
	status := "ok"
	if !ok {
		status = "error"
	}
	m.control.WithLabelValues(command, status).Inc()
}

// LeaseRenewed counts a lease renewal.
func (m *Metrics) LeaseRenewed() { m.renewed.Inc() }

// LeaseLost counts a lost lease.
func (m *Metrics) LeaseLost() { m.lost.Inc() }
