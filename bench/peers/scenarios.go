package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// system is one queue under test, opened on one backend with a worker
// whose handlers report to a probe. Every method but Close is called from
// one goroutine, in the order: EnqueueNoops (drain only), Start, then the
// scenario's calls, Stop, CheckDrained (drain only), Close.
type system interface {
	// Backend names the backend, e.g. "redis", "postgres", "sqlite".
	Backend() string
	// EnqueueNoops stores n no-op tasks, batch per call, before any
	// worker runs; their handlers call probe.noop.
	EnqueueNoops(ctx context.Context, n, batch int) error
	// EnqueueNoop stores one no-op task with one call, as a producer
	// that enqueues one task at a time does; safe for concurrent use.
	EnqueueNoop(ctx context.Context) error
	// Start starts one worker with concurrency c and returns once it is
	// ready to claim.
	Start(ctx context.Context, c int) error
	// EnqueuePickup enqueues one task whose handler calls probe.pickedUp
	// first thing.
	EnqueuePickup(ctx context.Context) error
	// EnqueueLong enqueues one task whose handler calls probe.longStarted
	// with the id it was given here, then waits for its context to end
	// and calls probe.longCancelled.
	EnqueueLong(ctx context.Context) (string, error)
	// Cancel asks for the running task id to be cancelled, the way the
	// system's users do (stem: a revoke with terminate; River: JobCancel).
	Cancel(ctx context.Context, id string) error
	// Outcome waits until the cancelled task id has left the running
	// state and reports whether it ended for good (final), rather than
	// being scheduled to run again (asynq retries it).
	Outcome(ctx context.Context, id string) (final bool, err error)
	// Stop stops the worker, after its outcomes are recorded.
	Stop(ctx context.Context) error
	// CheckDrained reports an error unless the n no-op tasks are recorded
	// as completed; called after Stop.
	CheckDrained(ctx context.Context, n int) error
	// Close releases what the system opened or created (connections, a
	// schema, a file); it stops the worker first if it still runs.
	Close(ctx context.Context) error
}

// probe is where the handlers of every system report: the scenarios wait
// on its channels, never on sleeps.
type probe struct {
	noops     atomic.Int64
	noopGoal  int64
	drained   chan struct{} // closed when noops reaches noopGoal
	drainOnce sync.Once

	picked    chan time.Time // a pickup task's handler started
	started   chan string    // a long task's handler started, with its id
	cancelled chan time.Time // a long task's context ended
}

func newProbe() *probe {
	return &probe{drained: make(chan struct{}), picked: make(chan time.Time, 16),
		started: make(chan string, 16), cancelled: make(chan time.Time, 16)}
}

// noop is a no-op task's handler body.
func (p *probe) noop() {
	if p.noops.Add(1) == p.noopGoal {
		p.drainOnce.Do(func() { close(p.drained) })
	}
}

// pickedUp is a pickup task's handler body.
func (p *probe) pickedUp() { p.picked <- time.Now() }

// longTask is a long task's handler body: it runs until ctx ends.
func (p *probe) longTask(ctx context.Context, id string) {
	p.started <- id
	<-ctx.Done()
	p.cancelled <- time.Now()
}

// roundTimeout bounds every wait of a scenario, so that a system that
// loses a task fails the run instead of hanging it.
const roundTimeout = 60 * time.Second

// run opens cfg's system, runs its scenario and closes the system.
func run(ctx context.Context, cfg config, logger *slog.Logger) (f figure, err error) {
	p := newProbe()
	sys, err := openSystem(ctx, cfg, p, logger)
	if err != nil {
		return f, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if cerr := sys.Close(cctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close: %w", cerr))
		}
	}()
	f = figure{System: cfg.System, Backend: sys.Backend(), Scenario: cfg.Scenario, Concurrency: cfg.Concurrency,
		Note: cfg.Note}
	if cfg.FetchCooldown > 0 {
		f.FetchCooldown = cfg.FetchCooldown.String()
	}
	switch cfg.Scenario {
	case "drain":
		err = drain(ctx, cfg, sys, p, &f)
	case "pickup":
		err = pickup(ctx, cfg, sys, p, &f)
	case "idlecpu":
		err = idleCPU(ctx, cfg, sys, &f)
	case "cancel":
		err = cancelRounds(ctx, cfg, sys, p, &f)
	case "enqueue":
		err = enqueueOneByOne(ctx, cfg, sys, p, &f)
	default:
		err = fmt.Errorf("unknown scenario %q", cfg.Scenario)
	}
	return f, err
}

// await waits for a value on ch, for at most roundTimeout.
func await[T any](ctx context.Context, ch <-chan T, what string) (T, error) {
	var zero T
	t := time.NewTimer(roundTimeout)
	defer t.Stop()
	select {
	case v := <-ch:
		return v, nil
	case <-t.C:
		return zero, fmt.Errorf("%s: nothing after %s", what, roundTimeout)
	case <-ctx.Done():
		return zero, fmt.Errorf("%s: %w", what, context.Cause(ctx))
	}
}

// drain enqueues cfg.Tasks no-op tasks, then starts the worker and times
// until every handler has run.
func drain(ctx context.Context, cfg config, sys system, p *probe, f *figure) error {
	p.noopGoal = int64(cfg.Tasks)
	t0 := time.Now()
	if err := sys.EnqueueNoops(ctx, cfg.Tasks, cfg.Batch); err != nil {
		return fmt.Errorf("enqueue: %w", err)
	}
	enq := time.Since(t0)
	if cfg.CPUProfile != "" {
		stop, err := startCPUProfile(cfg.CPUProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	start := time.Now()
	if err := sys.Start(ctx, cfg.Concurrency); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	deadline := time.NewTimer(10 * time.Minute)
	defer deadline.Stop()
	select {
	case <-p.drained:
	case <-deadline.C:
		return fmt.Errorf("drain: %d of %d tasks ran in 10 minutes", p.noops.Load(), cfg.Tasks)
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	took := time.Since(start)
	pprof.StopCPUProfile() // the timed part only; stop is then a no-op
	if err := sys.Stop(ctx); err != nil {
		return fmt.Errorf("stop worker: %w", err)
	}
	if err := sys.CheckDrained(ctx, cfg.Tasks); err != nil {
		return err
	}
	f.Tasks, f.Seconds = cfg.Tasks, took.Seconds()
	f.TasksPerSec = float64(cfg.Tasks) / took.Seconds()
	f.EnqueuePerSec = float64(cfg.Tasks) / enq.Seconds()
	return nil
}

// warmups are the rounds of pickup and cancel run before the counted ones,
// so that connections are open and code paths warm.
const warmups = 2

// pickup times, on an idle worker, from before each enqueue call to the
// handler's start.
func pickup(ctx context.Context, cfg config, sys system, p *probe, f *figure) error {
	if err := sys.Start(ctx, cfg.Concurrency); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	start := time.Now()
	lat := make([]time.Duration, 0, cfg.Rounds)
	for i := range warmups + cfg.Rounds {
		t0 := time.Now()
		if err := sys.EnqueuePickup(ctx); err != nil {
			return fmt.Errorf("round %d: enqueue: %w", i, err)
		}
		t1, err := await(ctx, p.picked, fmt.Sprintf("round %d: pickup", i))
		if err != nil {
			return err
		}
		if i >= warmups {
			lat = append(lat, t1.Sub(t0))
		}
		if err := pace(ctx, t0, cfg.Interval); err != nil {
			return err
		}
	}
	return endRounds(ctx, cfg, sys, f, start, lat)
}

// pace waits until interval has passed since t0: the pacing of a
// benchmark's rounds, not a synchronisation.
func pace(ctx context.Context, t0 time.Time, interval time.Duration) error {
	d := time.Until(t0.Add(interval))
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// idleCPU starts a worker, waits one second for its start-up work to end,
// and measures the process's CPU time while it sits idle for cfg.Idle.
func idleCPU(ctx context.Context, cfg config, sys system, f *figure) error {
	if err := sys.Start(ctx, cfg.Concurrency); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	if err := pace(ctx, time.Now(), time.Second); err != nil {
		return err
	}
	c0, err := processCPU()
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := pace(ctx, t0, cfg.Idle); err != nil {
		return err
	}
	c1, err := processCPU()
	if err != nil {
		return err
	}
	t1 := time.Now()
	if err := sys.Stop(ctx); err != nil {
		return fmt.Errorf("stop worker: %w", err)
	}
	wall := t1.Sub(t0)
	f.IdleSeconds, f.Seconds = wall.Seconds(), wall.Seconds()
	f.CPUPercent = 100 * (c1 - c0).Seconds() / wall.Seconds()
	return nil
}

// cancelRounds starts a task that runs until its context ends and, once
// it runs, cancels it, timing from before the cancel call to the
// handler's context ending.
func cancelRounds(ctx context.Context, cfg config, sys system, p *probe, f *figure) error {
	if err := sys.Start(ctx, cfg.Concurrency); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	start := time.Now()
	lat := make([]time.Duration, 0, cfg.Rounds)
	calls := make([]time.Duration, 0, cfg.Rounds)
	for i := range warmups + cfg.Rounds {
		t0 := time.Now()
		id, err := sys.EnqueueLong(ctx)
		if err != nil {
			return fmt.Errorf("round %d: enqueue: %w", i, err)
		}
		got, err := await(ctx, p.started, fmt.Sprintf("round %d: start of task %s", i, id))
		if err != nil {
			return err
		}
		if got != id {
			return fmt.Errorf("round %d: task %s started, want %s", i, got, id)
		}
		c0 := time.Now()
		type callResult struct {
			took time.Duration
			err  error
		}
		call := make(chan callResult, 1)
		go func() {
			err := sys.Cancel(ctx, id)
			call <- callResult{time.Since(c0), err}
		}()
		c1, err := await(ctx, p.cancelled, fmt.Sprintf("round %d: context of task %s cancelled", i, id))
		if err != nil {
			return err
		}
		cr := <-call
		if cr.err != nil {
			return fmt.Errorf("round %d: cancel %s: %w", i, id, cr.err)
		}
		final, err := sys.Outcome(ctx, id)
		if err != nil {
			return fmt.Errorf("round %d: outcome of %s: %w", i, id, err)
		}
		if i >= warmups {
			lat = append(lat, c1.Sub(c0))
			calls = append(calls, cr.took)
			if final {
				f.CancelFinal++
			} else {
				f.CancelRerun++
			}
		}
		if err := pace(ctx, t0, cfg.Interval); err != nil {
			return err
		}
	}
	f.CallP50Ms = ms(percentile(calls, 50))
	return endRounds(ctx, cfg, sys, f, start, lat)
}

// percentile returns the p-th percentile of ds by the nearest-rank
// method (p=100: the largest); zero for none.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// ms is d in milliseconds, rounded to microseconds.
func ms(d time.Duration) float64 {
	return math.Round(float64(d)/float64(time.Microsecond)) / 1000
}

// startCPUProfile starts a CPU profile into path; the returned func stops
// it and closes the file.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile %s: %w", path, err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// enqueueOneByOne times cfg.Tasks no-op tasks enqueued one call each from
// cfg.Producers goroutines, then (untimed) starts the worker and waits for
// every task to run, so that the store is left drained.
func enqueueOneByOne(ctx context.Context, cfg config, sys system, p *probe, f *figure) error {
	p.noopGoal = int64(cfg.Tasks)
	var next atomic.Int64
	errs := make(chan error, cfg.Producers)
	if cfg.CPUProfile != "" {
		stop, err := startCPUProfile(cfg.CPUProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	server := serverCPUOf(ctx, cfg.URL)
	defer server.close()
	// The server's CPU is a figure of its own: a user the server refuses
	// INFO (an ACL) gets the rest of the figure without it.
	s0, serr := server.read(ctx)
	c0, err := processCPU()
	if err != nil {
		return err
	}
	start := time.Now()
	var wg sync.WaitGroup
	for range cfg.Producers {
		wg.Go(func() {
			for next.Add(1) <= int64(cfg.Tasks) {
				if err := sys.EnqueueNoop(ctx); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	pprof.StopCPUProfile() // the timed part only; stop is then a no-op
	c1, err := processCPU()
	if err != nil {
		return err
	}
	s1, err := server.read(ctx)
	serr = errors.Join(serr, err)
	f.ClientCPUUs = float64((c1 - c0).Microseconds()) / float64(cfg.Tasks)
	if serr == nil {
		f.ServerCPUUs = float64((s1 - s0).Microseconds()) / float64(cfg.Tasks)
	} else {
		fmt.Fprintf(os.Stderr, "peers: enqueue: no server CPU figure: %v\n", serr)
	}
	close(errs)
	if err := <-errs; err != nil {
		return fmt.Errorf("enqueue: %w", err)
	}
	f.Tasks, f.Producers, f.Seconds = cfg.Tasks, cfg.Producers, took.Seconds()
	f.EnqueuePerSec = float64(cfg.Tasks) / took.Seconds()
	if err := sys.Start(ctx, cfg.Concurrency); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	if _, err := await(ctx, p.drained, "the enqueued tasks to run"); err != nil {
		return err
	}
	return sys.Stop(ctx)
}

// endRounds ends a scenario of timed rounds begun at start: it stops the
// worker and records the rounds' duration and the latencies' percentiles.
func endRounds(ctx context.Context, cfg config, sys system, f *figure, start time.Time, lat []time.Duration) error {
	f.Seconds = time.Since(start).Seconds()
	if err := sys.Stop(ctx); err != nil {
		return fmt.Errorf("stop worker: %w", err)
	}
	f.Rounds = cfg.Rounds
	f.P50Ms, f.P99Ms, f.MaxMs = ms(percentile(lat, 50)), ms(percentile(lat, 99)), ms(percentile(lat, 100))
	return nil
}
