// Package jobs tracks the deliveries a worker holds, from claim to
// settlement: the Job of each claimed delivery, the Table that holds them
// with their leases, and the queries and revoke enforcement the control
// plane runs over them.
//
// Every Job field that changes after the claim is guarded by its Table's
// mutex and only reached through Table methods; the few a task's own
// goroutines touch (heartbeat, progress, the lost and settled flags) are
// atomics. The package knows nothing of the worker: the worker calls down
// into it, never the reverse.
package jobs

import (
	"context"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// Job is one claimed delivery from claim to settlement.
type Job struct {
	// D is the claimed delivery; read-only. Its address (&job.D)
	// identifies this claim: the same message claimed again (a lease
	// that lapsed) is another Job with an equal D (see Table.Forget).
	D stemdriver.Delivery
	// ClaimedAt is when the delivery was claimed (Table.Add); read-only.
	ClaimedAt time.Time
	// Base is the task's started record. The runner sets it before the
	// handler starts; it is read-only from then on.
	Base *stemtype.TaskResult

	// guarded by Table.mu
	minLease    time.Duration // the task's lease: no extension goes below it
	leaseDur    time.Duration
	leaseUntil  time.Time
	running     bool
	startedAt   time.Time
	cancel      context.CancelCauseFunc
	isolated    bool
	kill        chan time.Duration
	killAfterMs int64 // the grace period last relayed on kill

	// settled is stored under Table.mu (with running), so that a reader
	// holding the mutex sees both change together, and read without it
	// by the result writer, which drops the job's progress writes once it
	// is set: the outcome carries the last progress, and no write may
	// follow a final state.
	settled atomic.Bool

	lastHeartbeat atomic.Int64 // unix nanos
	progress      atomic.Pointer[stemtype.Progress]
	terminating   atomic.Bool
	lost          atomic.Bool
}

// Env returns the decoded task, nil when the message could not be decoded.
func (j *Job) Env() *stemtype.Envelope { return j.D.Envelope }

// TaskID returns the task's id, "" when the message could not be decoded.
func (j *Job) TaskID() string {
	if j.D.Envelope != nil {
		return j.D.Envelope.ID
	}
	return ""
}

// Heartbeat records a checkpoint of the running task at now.
func (j *Job) Heartbeat(now time.Time) { j.lastHeartbeat.Store(now.UnixNano()) }

// SetProgress records the task's latest progress report.
func (j *Job) SetProgress(p *stemtype.Progress) { j.progress.Store(p) }

// Progress returns the task's latest progress report, nil before the first.
func (j *Job) Progress() *stemtype.Progress { return j.progress.Load() }

// Lost reports whether the job's lease was lost: another worker may hold
// the task now.
func (j *Job) Lost() bool { return j.lost.Load() }

// Settled reports whether the job's outcome was decided (Table.MarkSettled).
func (j *Job) Settled() bool { return j.settled.Load() }

// SettledFlag returns the flag Table.MarkSettled sets, for the result
// writer to drop the job's progress writes from then on. Never store it.
func (j *Job) SettledFlag() *atomic.Bool { return &j.settled }

// key identifies a held delivery: receipts are unique per queue only.
func key(d *stemdriver.Delivery) string { return d.Queue + "\x00" + d.Receipt }

// Table holds the jobs of one worker: every delivery claimed and not yet
// forgotten, keyed by queue and receipt. The zero value is not usable;
// build one with NewTable.
type Table struct {
	mu   sync.Mutex
	held map[string]*Job
}

// NewTable returns an empty table.
func NewTable() *Table { return &Table{held: make(map[string]*Job)} }

// Add holds a job for each delivery of a claimed batch, leased for lease
// from now, and returns them in the order of ds. A delivery whose key the
// table holds already (the same message claimed again) replaces the older
// job, whose later Forget is then a no-op.
func (t *Table) Add(ds []stemdriver.Delivery, lease time.Duration, now time.Time) []*Job {
	js := make([]*Job, len(ds))
	t.mu.Lock()
	for i, d := range ds {
		j := &Job{D: d, ClaimedAt: now, minLease: lease, leaseDur: lease, leaseUntil: now.Add(lease)}
		js[i] = j
		t.held[key(&j.D)] = j
	}
	t.mu.Unlock()
	return js
}

// Forget drops the job whose delivery d points at (&job.D) from the table;
// a job held since for another claim of the same message stays.
func (t *Table) Forget(d *stemdriver.Delivery) {
	t.mu.Lock()
	if k := key(d); t.held[k] != nil && &t.held[k].D == d {
		delete(t.held, k)
	}
	t.mu.Unlock()
}

// Start marks j running from now, cancelled by cancel, and returns the
// channel on which EnforceTerminates relays kill-after grace periods: nil
// unless isolated (the task runs in a child process).
func (t *Table) Start(j *Job, now time.Time, cancel context.CancelCauseFunc, isolated bool) <-chan time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	j.running, j.startedAt, j.cancel, j.isolated = true, now, cancel, isolated
	if isolated {
		j.kill = make(chan time.Duration, 4)
	}
	return j.kill
}

// MarkSettled marks j's outcome decided: the job no longer runs, and the
// result writer drops its progress writes from now on.
func (t *Table) MarkSettled(j *Job) {
	t.mu.Lock()
	j.running = false
	j.settled.Store(true)
	t.mu.Unlock()
}

// Running returns how many held jobs are running.
func (t *Table) Running() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, j := range t.held {
		if j.running {
			n++
		}
	}
	return n
}

// Counts returns how many held jobs are running and how many wait to
// start (claimed, neither running nor settled), without a list.
func (t *Table) Counts() (running, waiting int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, j := range t.held {
		switch {
		case j.running:
			running++
		case !j.settled.Load():
			waiting++
		}
	}
	return running, waiting
}

// Abandon forgets every held job whose outcome is not decided and returns
// their deliveries, for the caller to release (tasks abandoned at
// shutdown). Settled jobs stay: their outcomes are in the result writer.
func (t *Table) Abandon() []stemdriver.Delivery {
	t.mu.Lock()
	defer t.mu.Unlock()
	ds := make([]stemdriver.Delivery, 0, len(t.held))
	for k, j := range t.held {
		if j.settled.Load() {
			continue
		}
		ds = append(ds, j.D)
		delete(t.held, k)
	}
	return ds
}

// SetMinLease sets the task's own lease of j: no extension goes below it.
func (t *Table) SetMinLease(j *Job, d time.Duration) {
	t.mu.Lock()
	j.minLease = d
	t.mu.Unlock()
}

// Due returns the held jobs whose lease should be renewed at now (less
// than two thirds of their lease duration left; lost leases are skipped)
// and how long to wait before the next look: next, or a quarter of the
// shortest lease duration held when that is shorter.
func (t *Table) Due(now time.Time, next time.Duration) ([]*Job, time.Duration) {
	var due []*Job
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, j := range t.held {
		if j.lost.Load() {
			continue
		}
		next = min(next, j.leaseDur/4)
		if j.leaseUntil.Sub(now) < j.leaseDur*2/3 {
			due = append(due, j)
		}
	}
	return due, next
}

// LeaseFor returns the lease to ask the broker for when renewing j at now:
// its current lease duration when d is 0. A request for d never shortens
// the lease: the lease duration becomes d, but at least the task's lease
// (SetMinLease), and the renewal never moves the current deadline earlier.
// A short d would otherwise let the lease lapse between two renewals.
func (t *Table) LeaseFor(j *Job, d time.Duration, now time.Time) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	if d > 0 {
		j.leaseDur = max(d, j.minLease)
	}
	return max(j.leaseDur, j.leaseUntil.Sub(now))
}

// Extended records that j's lease runs until until, unless it ran later
// already.
func (t *Table) Extended(j *Job, until time.Time) {
	t.mu.Lock()
	if until.After(j.leaseUntil) {
		j.leaseUntil = until
	}
	t.mu.Unlock()
}

// LeaseLost records that the broker refused to renew j's lease. It
// reports held false when j was settled or forgotten meanwhile (nothing
// was lost), and first true for the first report of the loss, which also
// cancels a running job's context with cause.
func (t *Table) LeaseLost(j *Job, cause error) (held, first bool) {
	t.mu.Lock()
	if j.settled.Load() || t.held[key(&j.D)] != j {
		t.mu.Unlock()
		return false, false
	}
	first = !j.lost.Swap(true)
	cancel := j.cancel
	t.mu.Unlock()
	if first && cancel != nil {
		cancel(cause)
	}
	return true, first
}

// Inflight returns the running jobs as inspect reports them, oldest start
// first, with runtimes measured at now.
func (t *Table) Inflight(now time.Time) []stemtype.ActiveTask {
	t.mu.Lock()
	active := make([]stemtype.ActiveTask, 0, len(t.held))
	for _, j := range t.held {
		env := j.D.Envelope
		if !j.running || env == nil {
			continue
		}
		a := stemtype.ActiveTask{
			ID: env.ID, Task: env.Task, Queue: env.Queue, Attempt: env.Attempt,
			StartedAt: j.startedAt, RuntimeMs: now.Sub(j.startedAt).Milliseconds(), Isolated: j.isolated,
			Progress: j.progress.Load(), Terminating: j.terminating.Load(),
		}
		if hb := j.lastHeartbeat.Load(); hb != 0 {
			a.LastHeartbeatAt = time.Unix(0, hb).UTC()
		}
		active = append(active, a)
	}
	t.mu.Unlock()
	slices.SortFunc(active, func(a, b stemtype.ActiveTask) int { return a.StartedAt.Compare(b.StartedAt) })
	return active
}

// Waiting returns the held jobs that wait to start: claimed, neither
// running nor settled (prefetched tasks waiting for a free slot).
func (t *Table) Waiting() []*Job {
	var out []*Job
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, j := range t.held {
		if !j.running && !j.settled.Load() {
			out = append(out, j)
		}
	}
	return out
}

// Held returns the ids among named of the tasks held running or settling,
// each once. A job waiting to start (prefetched) is not held: it meets a
// revoke before it starts, since the runner marks a job running (Start)
// before it looks the revoke up.
func (t *Table) Held(named map[string]bool) []string {
	var out []string
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, j := range t.held {
		env := j.D.Envelope
		if env != nil && (j.running || j.settled.Load()) && named[env.ID] && !slices.Contains(out, env.ID) {
			out = append(out, env.ID)
		}
	}
	return out
}

// EnforceTerminates cancels every running job whose revoke (lookup, by the
// job's envelope: a revoke may name its id or its task name) asks
// to terminate it, and relays the revoke's kill-after grace period to
// isolated ones when it changed. It costs one lookup per running job,
// whatever the size of the revoke set, and returns the ids of the running
// jobs under a terminate revoke. terminate is called once per job, as it
// starts terminating, under the table's mutex: it returns the cause the
// job's context is cancelled with. When it cancelled a job, it yields the
// processor once the table is unlocked: the Go scheduler queues a
// goroutine woken by a cancellation to run after the waker, which would
// otherwise first answer the revoke (a reply to encode and write) before
// the task sees its context end.
func (t *Table) EnforceTerminates(lookup func(env *stemtype.Envelope) (stemtype.RevokeRecord, bool),
	terminate func(stemtype.RevokeRecord) error) []string {
	var out []string
	cancelled := false
	t.mu.Lock()
	defer func() {
		t.mu.Unlock()
		if cancelled {
			runtime.Gosched()
		}
	}()
	for _, j := range t.held {
		env := j.D.Envelope
		if !j.running || env == nil || j.cancel == nil {
			continue
		}
		rec, ok := lookup(env)
		if !ok || !rec.Terminate {
			continue
		}
		out = append(out, env.ID)
		if j.terminating.CompareAndSwap(false, true) {
			j.cancel(terminate(rec))
			cancelled = true
		}
		if j.kill != nil && rec.KillAfterMs > 0 && j.killAfterMs != rec.KillAfterMs {
			select {
			case j.kill <- time.Duration(rec.KillAfterMs) * time.Millisecond:
				j.killAfterMs = rec.KillAfterMs
			default: // the executor is behind: the next sync or command retries
			}
		}
	}
	return out
}
