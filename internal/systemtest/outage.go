package systemtest

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
)

// Outage is a broker server outage for RunOutage: a backend test that can
// take its server down for real (kill a private redis-server, terminate
// stem's Postgres connections) describes it here, and RunOutage runs
// producers and a worker through it.
type Outage struct {
	// Roles are the drivers on the server the outage hits; Broker and
	// Results are used.
	Roles Roles
	// Tasks is how many tasks the producers try to enqueue (default 2000),
	// Producers how many goroutines enqueue them (default 4).
	Tasks, Producers int
	// Fault takes the server down, brings it back and returns when it
	// answers again: the time it went down and the time it was back.
	// RunOutage calls it once a third of the tasks ran, while producers
	// and the worker keep going.
	Fault func(t *testing.T) (down, up time.Time)
	// Settle bounds the wait, after the server is back, for every task
	// whose Enqueue returned nil to run (default 20s, below the 30s lease,
	// so a task left to its lease is reported lost).
	Settle time.Duration
}

// OutageLease is the worker's lease in RunOutage.
const OutageLease = 30 * time.Second

// OutageFigures are what RunOutage measured.
type OutageFigures struct {
	// Enqueued counts the Enqueues that returned nil, Failed those that
	// returned an error.
	Enqueued, Failed int
	// Lost are the tasks whose Enqueue returned nil and that did not run
	// within Settle of the server's return, with when Enqueue returned.
	Lost map[string]time.Time
	// Ran counts the tasks that ran, Duplicates the runs beyond a task's
	// first.
	Ran, Duplicates int
	// Down and Up are the outage's bounds as Fault returned them.
	Down, Up time.Time
	// Reconsumed is how long after Up the worker first started a task.
	Reconsumed time.Duration
	// ClaimFailures counts the worker's "claim failed" log records
	// between Down and Up, and ClaimFailuresUntilBack those between Down
	// and the first task started after Up (the outage as the worker saw
	// it, including the reconnect).
	ClaimFailures, ClaimFailuresUntilBack int
	// Warnings counts the worker's warnings and errors of any kind
	// between Down and the first task started after Up.
	Warnings int
	// WorkerAlive is whether the worker's Run was still running at the
	// end.
	WorkerAlive bool
}

// outageLedger records every run of every task, outside the broker.
type outageLedger struct {
	mu    sync.Mutex
	runs  map[string]int
	times []time.Time // start of each run, in order
}

func (l *outageLedger) record(id string) {
	now := time.Now()
	l.mu.Lock()
	l.runs[id]++
	l.times = append(l.times, now)
	l.mu.Unlock()
}

func (l *outageLedger) distinct() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.runs)
}

// firstAfter returns the first run started at or after t.
func (l *outageLedger) firstAfter(t time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, at := range l.times {
		if !at.Before(t) {
			return at, true
		}
	}
	return time.Time{}, false
}

// logTimes is a slog.Handler that keeps the time of every record with one
// message, and of every warning or error (warns).
type logTimes struct {
	msg   string
	mu    *sync.Mutex
	at    *[]time.Time
	warns *[]time.Time
}

func (h logTimes) Enabled(context.Context, slog.Level) bool { return true }
func (h logTimes) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if r.Message == h.msg {
		*h.at = append(*h.at, time.Now())
	}
	if r.Level >= slog.LevelWarn {
		*h.warns = append(*h.warns, time.Now())
	}
	return nil
}
func (h logTimes) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h logTimes) WithGroup(string) slog.Handler      { return h }

func (h logTimes) between(from, to time.Time) int { return h.count(h.at, from, to) }

func (h logTimes) count(times *[]time.Time, from, to time.Time) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, at := range *times {
		if !at.Before(from) && !at.After(to) {
			n++
		}
	}
	return n
}

// RunOutage enqueues o.Tasks tasks from o.Producers goroutines while one
// worker runs them, each run noted in a ledger kept in the test's memory;
// once a third ran it calls o.Fault, then lets the run finish and returns
// the figures. Producers count an Enqueue that fails and go on after a
// pause (an outage must end in an error, never a silent drop: a task whose
// Enqueue returned nil and never ran is lost).
func RunOutage(t *testing.T, o Outage) OutageFigures {
	t.Helper()
	if o.Tasks == 0 {
		o.Tasks = 2000
	}
	if o.Producers == 0 {
		o.Producers = 4
	}
	if o.Settle == 0 {
		o.Settle = 20 * time.Second
	}
	ledger := &outageLedger{runs: make(map[string]int)}
	reg := stem.NewRegistry()
	stem.Register(reg, "outage.ledger", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		ledger.record(tc.TaskID())
		return nil, nil
	}, stem.TaskOptions{})
	claims := logTimes{msg: "claim failed", mu: new(sync.Mutex), at: new([]time.Time), warns: new([]time.Time)}
	w, err := stem.NewWorker(stem.WorkerConfig{Registry: reg, Broker: o.Roles.Broker, Results: o.Roles.Results,
		Concurrency: 8, Lease: OutageLease, Logger: slog.New(claims)})
	if err != nil {
		t.Fatal(err)
	}
	wctx, stopWorker := context.WithCancel(context.Background())
	defer stopWorker()
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	select {
	case <-w.Ready():
	case err := <-done:
		t.Fatalf("worker: Run: %v", err)
	}

	client, err := stem.NewClient(stem.ClientConfig{Broker: o.Roles.Broker, Results: o.Roles.Results})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		acked    = make(map[string]time.Time)
		failed   int
		attempts atomic.Int64
		wg       sync.WaitGroup
	)
	pctx, stopProducers := context.WithCancel(context.Background())
	defer stopProducers()
	for range o.Producers {
		wg.Go(func() {
			for attempts.Add(1) <= int64(o.Tasks) && pctx.Err() == nil {
				ctx, cancel := context.WithTimeout(pctx, 10*time.Second)
				id, err := client.Enqueue(ctx, "outage.ledger", nil, stem.EnqueueOptions{})
				cancel()
				mu.Lock()
				if err == nil {
					acked[id] = time.Now()
				} else {
					failed++
				}
				mu.Unlock()
				if err != nil {
					// A producer's own pause before it tries again, not a
					// synchronisation.
					t := time.NewTimer(50 * time.Millisecond)
					select {
					case <-t.C:
					case <-pctx.Done():
					}
					t.Stop()
				}
			}
		})
	}

	waitUntil := func(what string, limit time.Duration, cond func() bool) bool {
		deadline := time.Now().Add(limit)
		for !cond() {
			if time.Now().After(deadline) {
				t.Logf("gave up waiting %v for %s", limit, what)
				return false
			}
			time.Sleep(10 * time.Millisecond) // polling a condition with a deadline
		}
		return true
	}
	if !waitUntil("a third of the tasks to run", 60*time.Second, func() bool { return ledger.distinct() >= o.Tasks/3 }) {
		t.Fatalf("only %d tasks ran before the fault", ledger.distinct())
	}
	var f OutageFigures
	f.Down, f.Up = o.Fault(t)
	wg.Wait()
	mu.Lock()
	f.Enqueued, f.Failed = len(acked), failed
	mu.Unlock()
	allRan := func() bool {
		ledger.mu.Lock()
		defer ledger.mu.Unlock()
		for id := range acked {
			if ledger.runs[id] == 0 {
				return false
			}
		}
		return true
	}
	waitUntil("every acknowledged task to run", time.Until(f.Up.Add(o.Settle)), allRan)

	ledger.mu.Lock()
	f.Lost = make(map[string]time.Time)
	for id, at := range acked {
		if ledger.runs[id] == 0 {
			f.Lost[id] = at
		}
	}
	f.Ran = len(ledger.runs)
	for _, n := range ledger.runs {
		f.Duplicates += n - 1
	}
	ledger.mu.Unlock()
	if at, ok := ledger.firstAfter(f.Up); ok {
		f.Reconsumed = at.Sub(f.Up)
		f.ClaimFailuresUntilBack = claims.between(f.Down, at)
		f.Warnings = claims.count(claims.warns, f.Down, at)
	} else {
		f.Reconsumed = -1
	}
	f.ClaimFailures = claims.between(f.Down, f.Up)
	select {
	case err := <-done:
		t.Errorf("worker's Run returned during the outage: %v", err)
	default:
		f.WorkerAlive = true
	}
	stopWorker()
	if f.WorkerAlive {
		if err := <-done; err != nil {
			t.Errorf("worker: Run: %v", err)
		}
	}
	t.Logf("outage of %v: enqueued %d, failed %d, ran %d, lost %d, duplicates %d, consuming again %v after the return, claim failures %d while down (%d until consuming again), warnings and errors logged until then %d",
		f.Up.Sub(f.Down).Round(time.Millisecond), f.Enqueued, f.Failed, f.Ran, len(f.Lost), f.Duplicates,
		f.Reconsumed.Round(time.Millisecond), f.ClaimFailures, f.ClaimFailuresUntilBack, f.Warnings)
	return f
}

// CheckOutage asserts the figures of an outage after which nothing may be
// lost: every Enqueue that returned nil ran, the worker stayed alive and
// consumed again within reconsume of the server's return, and it retried
// its claims with a backoff while the server was down (at most maxClaims
// failures until it consumed again, and at most 10 times as many
// warnings and errors of any kind: a hot loop logs thousands).
func CheckOutage(t *testing.T, f OutageFigures, reconsume time.Duration, maxClaims int) {
	t.Helper()
	if len(f.Lost) > 0 {
		t.Errorf("%d of %d acknowledged tasks never ran (within the settle time, below the %v lease)", len(f.Lost), f.Enqueued, OutageLease)
	}
	if !f.WorkerAlive {
		t.Error("the worker did not survive the outage")
	}
	if f.Reconsumed < 0 || f.Reconsumed > reconsume {
		t.Errorf("the worker consumed again %v after the server's return, want within %v", f.Reconsumed, reconsume)
	}
	if f.ClaimFailuresUntilBack > maxClaims {
		t.Errorf("%d failed claims during an outage of %v: no backoff (want at most %d)", f.ClaimFailuresUntilBack, f.Up.Sub(f.Down), maxClaims)
	}
	if f.Warnings > 10*maxClaims {
		t.Errorf("the worker logged %d warnings and errors during an outage of %v: a hot loop (want at most %d)", f.Warnings, f.Up.Sub(f.Down), 10*maxClaims)
	}
	if f.Enqueued == 0 {
		t.Error("no Enqueue succeeded")
	}
}
