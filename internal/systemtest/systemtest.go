// Package systemtest is the system-level suite every backend runs: the real
// stem.Worker, stem.Client and stem.Controller over a backend's four
// drivers, checking what a user sees (results, retries, revokes, terminate,
// the control plane, lease recovery, shutdown, namespace isolation, fair
// dispatch) rather than what one driver promises (that is stemdrivertest's
// job).
//
// A backend wires it in a few lines:
//
//	func TestSystem(t *testing.T) {
//		systemtest.Run(t, systemtest.Harness{
//			Open: func(t *testing.T, namespace string) systemtest.Roles {
//				// open the four roles in namespace, register their Close
//				// (and the deletion of the namespace's data) with t.Cleanup
//			},
//		})
//	}
//
// The isolated case runs tasks in child processes re-executed from the
// test binary, so the wiring package's TestMain serves the child role with
// the suite's registry before anything else:
//
//	func TestMain(m *testing.M) {
//		isolated.ServeIfChild(systemtest.Registry())
//		goleak.VerifyTestMain(m)
//	}
//
// Every case runs in parallel with a namespace of its own, so Open must give
// one backend scope (one server, one database, one in-memory hub) to every
// namespace: the isolation case opens two namespaces and checks that nothing
// crosses between them. Cases wait on events (channels closed by handlers,
// Client.Wait, control replies); where only a state can be polled, the
// deadline is a failure bound, never a synchronisation.
package systemtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/isolated"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// Roles are the four drivers of one namespace, as a backend opens them.
type Roles struct {
	Broker  stemdriver.Broker
	Results stemdriver.ResultBackend
	Revokes stemdriver.RevokeStore
	Control stemdriver.ControlTransport
}

// Capabilities declare what a backend can do that the suite cannot assume.
// The zero value suits a backend with millisecond leases.
type Capabilities struct {
	// ShortLease is the shortest lease the broker honours, used by the
	// consumer that dies holding a task: its lease must expire for
	// another worker to finish the work. Default: 100ms. A backend whose
	// leases have a coarser clock (whole seconds) sets it higher.
	ShortLease time.Duration
}

// Harness is how a backend joins the suite.
type Harness struct {
	// Open returns the four roles of namespace, all of one backend scope
	// shared by every call of the run. It registers with t.Cleanup the
	// roles' Close and the deletion of the namespace's data, and skips t
	// (testutil.SkipOrFail) when the backend is unreachable. Required.
	Open func(t *testing.T, namespace string) Roles
	// Capabilities of the backend; the zero value takes the defaults.
	Capabilities Capabilities
}

// Run runs every case of the suite against h, each as a parallel subtest
// with a namespace of its own.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.Open == nil {
		t.Fatal("systemtest: Harness.Open is nil")
	}
	if h.Capabilities.ShortLease <= 0 {
		h.Capabilities.ShortLease = 100 * time.Millisecond
	}
	cases := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"EnqueueAndResult", testEnqueueAndResult},
		{"RetryThenSucceed", testRetryThenSucceed},
		{"RevokeQueuedTask", testRevokeQueuedTask},
		{"RevokeBeforeWorkerStarts", testRevokeBeforeWorkerStarts},
		{"TerminateInline", testTerminateInline},
		{"TerminateIsolatedKillAfter", testTerminateIsolatedKillAfter},
		{"BroadcastReachesEveryWorker", testBroadcastReachesEveryWorker},
		{"TargetedCommand", testTargetedCommand},
		{"DeadWorkerLeaseExpires", testDeadWorkerLeaseExpires},
		{"WarmShutdownReleasesUnstarted", testWarmShutdownReleasesUnstarted},
		{"NamespaceIsolation", testNamespaceIsolation},
		{"FairLongTasksSpread", testFairLongTasksSpread},
		{"FairLongTaskAfterBurst", testFairLongTaskAfterBurst},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.fn(t, h)
		})
	}
}

// The suite's isolated tasks, which Registry registers.
const (
	// taskSpinIsolated reports progress once, with its child's pid as
	// data, then burns CPU, ignoring its context and never calling a
	// checkpoint again: only a kill stops it (or, should every kill fail,
	// twice waitBound, so that no child outlives a broken run for long).
	taskSpinIsolated = "system.spin-isolated"
	// taskPIDIsolated returns its child's pid.
	taskPIDIsolated = "system.pid-isolated"
)

// pidData is the pid an isolated task of the suite reports, as progress
// data or as its result.
type pidData struct {
	PID int `json:"pid"`
}

// Registry returns a new registry holding the suite's isolated tasks. The
// suite builds each deployment's registry with it (cases add their inline
// tasks), and the wiring package's TestMain passes it to
// isolated.ServeIfChild, so that the test binary, re-executed by a Pool as
// a child, has the same isolated entrypoints as the worker that started it.
func Registry() *stem.Registry {
	reg := stem.NewRegistry()
	reg.MustAdd(stem.Task{Name: taskSpinIsolated,
		// A retry would wait in the queue for an hour: the case sees it.
		Options: stem.TaskOptions{MaxRetries: 5, RetryPolicy: stem.ExponentialBackoff{Base: time.Hour}},
		Isolated: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
			if err := tc.Progress(0, pidData{PID: os.Getpid()}); err != nil {
				return nil, err
			}
			start := time.Now()
			x := uint64(1)
			for time.Since(start) < 2*waitBound {
				for range 1 << 16 {
					x = x*6364136223846793005 + 1442695040888963407
				}
			}
			return x % 1000, nil
		}})
	reg.MustAdd(stem.Task{Name: taskPIDIsolated, Isolated: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		return pidData{PID: os.Getpid()}, nil
	}})
	return reg
}

// waitBound bounds every wait of the suite: reaching it is a failure, never
// an expected path.
const waitBound = 30 * time.Second

// newNamespace returns a namespace no other case or run uses.
func newNamespace() string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return "sys" + hex.EncodeToString(b[:])
}

func quiet() *slog.Logger {
	if os.Getenv("STEM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// deployment is one namespace of the backend under test: its roles, one
// registry shared by the client and its workers, a client and a controller.
type deployment struct {
	t      *testing.T
	ns     string
	roles  Roles
	reg    *stem.Registry
	client *stem.Client
	ctl    *stem.Controller
}

// open opens a fresh namespace of h's backend.
func open(t *testing.T, h Harness) *deployment {
	t.Helper()
	ns := newNamespace()
	r := h.Open(t, ns)
	if r.Broker == nil || r.Results == nil || r.Revokes == nil || r.Control == nil {
		t.Fatalf("systemtest: Harness.Open returned a nil role: %+v", r)
	}
	d := &deployment{t: t, ns: ns, roles: r, reg: Registry()}
	var err error
	d.client, err = stem.NewClient(stem.ClientConfig{Broker: r.Broker, Results: r.Results, Registry: d.reg, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	d.ctl, err = stem.NewController(stem.ControllerConfig{Namespace: ns, Control: r.Control, Revokes: r.Revokes,
		Results: r.Results, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// startWorker runs a worker of the deployment until the test ends (or stop
// is called; stop returns once Run returned) and waits until it is ready.
// Tasks must be registered before.
func (d *deployment) startWorker(cfg stem.WorkerConfig) (*stem.Worker, func()) {
	d.t.Helper()
	cfg.Namespace, cfg.Registry = d.ns, d.reg
	cfg.Broker, cfg.Results, cfg.Revokes, cfg.Control = d.roles.Broker, d.roles.Results, d.roles.Revokes, d.roles.Control
	if cfg.Logger == nil {
		cfg.Logger = quiet()
	}
	if cfg.ClaimWait == 0 {
		cfg.ClaimWait = 50 * time.Millisecond
	}
	w, err := stem.NewWorker(cfg)
	if err != nil {
		d.t.Fatal(err)
	}
	return w, RunWorker(d.t, w)
}

// RunWorker runs w until the test ends or stop is called, and returns once
// w is ready; stop returns once Run returned, and a Run error fails t.
func RunWorker(t testing.TB, w *stem.Worker) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	select {
	case <-w.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("worker %s: Run: %v", w.ID(), err)
	}
	var stopped atomic.Bool
	stop = func() {
		if stopped.Swap(true) {
			return
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker %s: Run: %v", w.ID(), err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func (d *deployment) enqueue(task string, opts stem.EnqueueOptions) string {
	d.t.Helper()
	id, err := d.client.Enqueue(context.Background(), task, nil, opts)
	if err != nil {
		d.t.Fatal(err)
	}
	return id
}

// wait returns the final result of id.
func (d *deployment) wait(id string) *stemtype.TaskResult {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	res, err := d.client.Wait(ctx, id)
	if err != nil {
		d.t.Fatalf("wait for %s: %v", id, err)
	}
	return res
}

// waitFor polls cond until it holds; the deadline is a failure bound. It is
// for states no event announces (a non-final task state, a queue's depth).
func (d *deployment) waitFor(what string, cond func(ctx context.Context) bool) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	for !cond(ctx) {
		if ctx.Err() != nil {
			d.t.Fatalf("never: %s", what)
		}
		time.Sleep(2 * time.Millisecond) // polling a state: no event to wait on
	}
}

func (d *deployment) waitState(id string, state stemtype.State) {
	d.t.Helper()
	d.waitFor("task "+id+" reaches "+string(state), func(ctx context.Context) bool {
		r, err := d.roles.Results.Get(ctx, id)
		return err == nil && r.State == state
	})
}

func (d *deployment) waitDepth(queue string, n int64) {
	d.t.Helper()
	d.waitFor(fmt.Sprintf("queue %s holds %d", queue, n), func(ctx context.Context) bool {
		got, err := d.roles.Broker.Depth(ctx, queue)
		return err == nil && got == n
	})
}

func (d *deployment) depth(queue string) int64 {
	d.t.Helper()
	n, err := d.roles.Broker.Depth(context.Background(), queue)
	if err != nil {
		d.t.Fatal(err)
	}
	return n
}

// target addresses workers (every live one when none is named) with the
// suite's bound: a control command returns as soon as every live addressee answered.
func target(workers ...string) stem.Target {
	return stem.Target{Workers: workers, Timeout: waitBound}
}

func replyIDs(r *stem.Replies) []string {
	var ids []string
	for _, rep := range r.Replies {
		ids = append(ids, rep.WorkerID)
	}
	sort.Strings(ids)
	return ids
}

// checkRevokeMeta fails unless res is cancelled with the revoke's metadata.
func checkRevokeMeta(t *testing.T, res *stemtype.TaskResult, reason, by string) {
	t.Helper()
	if res.State != stemtype.StateCancelled || res.Meta[stemtype.MetaRevokedReason] != reason ||
		res.Meta[stemtype.MetaRevokedBy] != by || res.Meta[stemtype.MetaRevokedAt] == "" {
		t.Fatalf("result %+v, want cancelled with reason %q, by %q and a time", res, reason, by)
	}
}

// noneOf fails when ch holds a value: a handler that must not have run.
func noneOf(t *testing.T, ch <-chan string, what string) {
	t.Helper()
	select {
	case got := <-ch:
		t.Fatalf("%s: task %s ran", what, got)
	default:
	}
}

// A task enqueued by the client runs on a worker, and Wait returns its
// result with the worker that ran it.
func testEnqueueAndResult(t *testing.T, h Harness) {
	d := open(t, h)
	type addArgs struct{ A, B int }
	stem.Register(d.reg, "add", func(tc *stem.TaskContext, a addArgs) (any, error) {
		if tc.TaskID() == "" || tc.Attempt() != 0 {
			return nil, errors.New("bad task context")
		}
		return a.A + a.B, nil
	}, stem.TaskOptions{})
	d.startWorker(stem.WorkerConfig{ID: "w1"})
	id, err := d.client.Enqueue(context.Background(), "add", addArgs{2, 3}, stem.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res := d.wait(id)
	if res.State != stemtype.StateSucceeded || string(res.Result) != "5" || res.Error != nil || res.WorkerID != "w1" {
		t.Fatalf("got %+v", res)
	}
}

// A task that fails twice is retried and succeeds on its third attempt,
// which the result counts.
func testRetryThenSucceed(t *testing.T, h Harness) {
	d := open(t, h)
	attempts := make(chan int, 8)
	d.reg.MustAdd(stem.Task{Name: "flaky", Options: stem.TaskOptions{MaxRetries: 5,
		RetryPolicy: stem.ExponentialBackoff{Base: time.Millisecond, Max: 10 * time.Millisecond}},
		Run: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
			attempts <- tc.Attempt()
			if tc.Attempt() < 2 {
				return nil, errors.New("not yet")
			}
			return "ok", nil
		}})
	_, stop := d.startWorker(stem.WorkerConfig{})
	res := d.wait(d.enqueue("flaky", stem.EnqueueOptions{}))
	stop()
	close(attempts)
	var got []int
	for a := range attempts {
		got = append(got, a)
	}
	if res.State != stemtype.StateSucceeded || string(res.Result) != `"ok"` || res.Attempt != 2 {
		t.Fatalf("got %+v", res)
	}
	if !slices.Equal(got, []int{0, 1, 2}) {
		t.Fatalf("attempts %v, want [0 1 2]", got)
	}
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("queue depth %d after success, want 0", n)
	}
}

// A task revoked while it waits in the queue behind a busy worker never
// starts: it is cancelled with the revoke's metadata, and the worker goes
// on with the tasks after it.
func testRevokeQueuedTask(t *testing.T, h Harness) {
	d := open(t, h)
	gate := make(chan struct{})
	started := make(chan string, 4)
	d.reg.MustAdd(stem.Task{Name: "block", Run: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		started <- tc.TaskID()
		<-gate
		return nil, nil
	}})
	victimRan := make(chan string, 1)
	d.reg.MustAdd(stem.Task{Name: "victim", Run: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		victimRan <- tc.TaskID()
		return nil, nil
	}})
	_, stop := d.startWorker(stem.WorkerConfig{ID: "w1", Concurrency: 1, Prefetch: 1})
	release := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(release) // before the worker stops, should the case fail
	blocker := d.enqueue("block", stem.EnqueueOptions{})
	if got := <-started; got != blocker {
		t.Fatalf("started %s, want the blocker %s", got, blocker)
	}
	victim := d.enqueue("victim", stem.EnqueueOptions{})
	res, err := d.ctl.RevokeTasks(context.Background(), target(),
		stem.RevokeOptions{TaskIDs: []string{victim}, Reason: "bad data", RequestedBy: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Unknown) != 0 {
		t.Fatalf("revoke reports the enqueued task unknown: %+v", res)
	}
	checkRevokeMeta(t, d.wait(victim), "bad data", "ops")
	release()
	after := d.enqueue("block", stem.EnqueueOptions{})
	if got := <-started; got != after {
		t.Fatalf("started %s, want %s", got, after)
	}
	if r := d.wait(after); r.State != stemtype.StateSucceeded {
		t.Fatalf("the task after the revoked one: %+v", r)
	}
	stop()
	noneOf(t, victimRan, "revoked while queued")
	checkRevokeMeta(t, d.wait(victim), "bad data", "ops")
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("queue depth %d, want 0: the revoked task is acknowledged", n)
	}
}

// A revoke issued while no worker is up is stored, marks the task
// cancelled at once, and a worker started afterwards loads it and never
// runs the task.
func testRevokeBeforeWorkerStarts(t *testing.T, h Harness) {
	d := open(t, h)
	ran := make(chan string, 4)
	d.reg.MustAdd(stem.Task{Name: "victim", Run: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		ran <- tc.TaskID()
		return nil, nil
	}})
	done := make(chan string, 1)
	d.reg.MustAdd(stem.Task{Name: "marker", Run: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		done <- tc.TaskID()
		return nil, nil
	}})
	victim := d.enqueue("victim", stem.EnqueueOptions{})
	res, err := d.ctl.RevokeTasks(context.Background(), target(),
		stem.RevokeOptions{TaskIDs: []string{victim}, Reason: "stale", RequestedBy: "cron"})
	if err != nil || res.MarkErr != nil {
		t.Fatalf("revoke: %v, mark: %v", err, res.MarkErr)
	}
	if res.Replies == nil || res.Replies.Live == nil || len(res.Replies.Live) != 0 {
		t.Fatalf("revoke with no worker up: replies %+v, want no live worker", res.Replies)
	}
	got, err := d.roles.Results.Get(context.Background(), victim)
	if err != nil {
		t.Fatal(err)
	}
	checkRevokeMeta(t, got, "stale", "cron")
	_, stop := d.startWorker(stem.WorkerConfig{ID: "late", Concurrency: 1})
	marker := d.enqueue("marker", stem.EnqueueOptions{})
	if id := <-done; id != marker {
		t.Fatalf("marker ran as %s, want %s", id, marker)
	}
	d.wait(marker)
	stop()
	// Acknowledged, not released at shutdown: the worker met the victim
	// (ahead of the marker in the queue) and disposed of it unrun.
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("queue depth %d, want 0: the revoked task is acknowledged", n)
	}
	noneOf(t, ran, "revoked before the worker started")
	checkRevokeMeta(t, d.wait(victim), "stale", "cron")
}

// A terminate of a running inline task cancels its context with cause
// ErrTaskRevoked, its checkpoint (Heartbeat) returns an error matching
// ErrTaskRevoked, and it ends cancelled without a retry, whatever the
// handler returns.
func testTerminateInline(t *testing.T, h Harness) {
	d := open(t, h)
	started := make(chan struct{})
	var runs atomic.Int32
	type seen struct{ heartbeat, cause error }
	saw := make(chan seen, 1)
	d.reg.MustAdd(stem.Task{Name: "loop", Options: stem.TaskOptions{MaxRetries: 5,
		RetryPolicy: stem.ExponentialBackoff{Base: time.Hour}}, // a retry would wait in the queue
		Run: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
			if runs.Add(1) == 1 {
				close(started)
			}
			<-tc.Done()
			saw <- seen{heartbeat: tc.Heartbeat(), cause: context.Cause(tc)}
			return "ignored result", nil
		}})
	_, stop := d.startWorker(stem.WorkerConfig{ID: "w1"})
	id := d.enqueue("loop", stem.EnqueueOptions{})
	<-started
	d.waitState(id, stemtype.StateStarted)
	res, err := d.ctl.RevokeTasks(context.Background(), target("w1"),
		stem.RevokeOptions{TaskIDs: []string{id}, Terminate: true, Reason: "runaway", RequestedBy: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	var rr stemtype.RevokeReply
	if reps := res.Replies.Replies; len(reps) != 1 || json.Unmarshal(reps[0].Payload, &rr) != nil ||
		!slices.Equal(rr.Inflight, []string{id}) {
		t.Fatalf("revoke replies %+v", res.Replies)
	}
	s := <-saw
	if !errors.Is(s.heartbeat, stem.ErrTaskRevoked) || !errors.Is(s.cause, stem.ErrTaskRevoked) {
		t.Fatalf("heartbeat returned %v, context cause %v; want both to match ErrTaskRevoked", s.heartbeat, s.cause)
	}
	checkRevokeMeta(t, d.wait(id), "runaway", "ops")
	stop() // every outcome of the worker is settled once Run returned
	if n := runs.Load(); n != 1 {
		t.Fatalf("ran %d times, want 1", n)
	}
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("queue depth %d after terminate, want 0 (no retry)", n)
	}
	checkRevokeMeta(t, d.wait(id), "runaway", "ops")
}

// A terminate with a kill-after of a running isolated task that ignores
// its context and never checkpoints kills its child once the grace period
// is over: the task ends cancelled with the revoke's metadata, after one
// run and without a retry, and the pool replaces the killed child, so the
// next isolated task runs in a fresh one.
func testTerminateIsolatedKillAfter(t *testing.T, h Harness) {
	d := open(t, h)
	// Children built with the race detector would sleep a second at exit.
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	pool, err := isolated.NewPool(isolated.PoolConfig{Registry: d.reg, Size: 1, Logger: quiet(),
		Env: []string{"GORACE=" + gorace}, StartTimeout: waitBound})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pool.Close() }) // after the worker's Run returned
	_, stop := d.startWorker(stem.WorkerConfig{ID: "w1", Concurrency: 1, Prefetch: 1, Executor: pool})
	id := d.enqueue(taskSpinIsolated, stem.EnqueueOptions{})
	// The progress report says the task runs in its child: from there on
	// only a kill stops it.
	var spinner pidData
	d.waitFor("the isolated task reports its pid", func(ctx context.Context) bool {
		r, err := d.roles.Results.Get(ctx, id)
		return err == nil && r.State == stemtype.StateStarted && r.Progress != nil &&
			json.Unmarshal(r.Progress.Data, &spinner) == nil && spinner.PID > 0
	})
	res, err := d.ctl.RevokeTasks(context.Background(), target("w1"), stem.RevokeOptions{TaskIDs: []string{id},
		Terminate: true, KillAfter: 200 * time.Millisecond, Reason: "runaway", RequestedBy: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	var rr stemtype.RevokeReply
	if reps := res.Replies.Replies; len(reps) != 1 || json.Unmarshal(reps[0].Payload, &rr) != nil ||
		!slices.Equal(rr.Inflight, []string{id}) {
		t.Fatalf("revoke replies %+v", res.Replies)
	}
	final := d.wait(id)
	checkRevokeMeta(t, final, "runaway", "ops")
	if final.Attempt != 0 || final.WorkerID != "w1" {
		t.Fatalf("result %+v, want the first attempt, on w1", final)
	}
	next := d.wait(d.enqueue(taskPIDIsolated, stem.EnqueueOptions{}))
	var fresh pidData
	if next.State != stemtype.StateSucceeded || json.Unmarshal(next.Result, &fresh) != nil ||
		fresh.PID <= 0 || fresh.PID == spinner.PID {
		t.Fatalf("the next isolated task: %+v, want it to succeed in a child other than the killed %d", next, spinner.PID)
	}
	if s := pool.Stats(); s.Started != 2 || s.Live != 1 {
		t.Fatalf("pool %+v, want two children started (the killed one replaced) and one alive", s)
	}
	s, err := d.ctl.Stats(context.Background(), target("w1"))
	if err != nil {
		t.Fatal(err)
	}
	var st stemtype.StatsReply
	if len(s.Replies) != 1 || json.Unmarshal(s.Replies[0].Payload, &st) != nil ||
		st.Processed != 2 || st.Cancelled != 1 || st.Succeeded != 1 || st.Failed != 0 || st.Retried != 0 {
		t.Fatalf("stats of w1: %+v (%+v), want two tasks processed: one cancelled, one succeeded, no retry", s, st)
	}
	stop() // every outcome of the worker is settled once Run returned
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("queue depth %d after the kill, want 0 (no retry)", n)
	}
	checkRevokeMeta(t, d.wait(id), "runaway", "ops")
}

// A broadcast command reaches each of three workers, and each answers.
func testBroadcastReachesEveryWorker(t *testing.T, h Harness) {
	d := open(t, h)
	ids := []string{"w1", "w2", "w3"}
	for _, id := range ids {
		d.startWorker(stem.WorkerConfig{ID: id})
	}
	ctx := context.Background()
	r, err := d.ctl.Ping(ctx, target())
	if err != nil {
		t.Fatal(err)
	}
	if got := replyIDs(r); !slices.Equal(got, ids) || len(r.Missing) != 0 || !slices.Equal(r.Live, ids) {
		t.Fatalf("broadcast ping: replies from %v, missing %v, live %v; want each of %v", got, r.Missing, r.Live, ids)
	}
	if errs := r.Errors(); len(errs) != 0 {
		t.Fatalf("error replies %+v", errs)
	}
	s, err := d.ctl.Stats(ctx, target())
	if err != nil {
		t.Fatal(err)
	}
	if got := replyIDs(s); !slices.Equal(got, ids) {
		t.Fatalf("broadcast stats: replies from %v, want %v", got, ids)
	}
	for _, rep := range s.Replies {
		var st stemtype.StatsReply
		if err := json.Unmarshal(rep.Payload, &st); err != nil || st.Namespace != d.ns {
			t.Fatalf("stats of %s: %+v %v", rep.WorkerID, st, err)
		}
	}
}

// A command addressed to one worker of three is answered by that worker
// alone; a named worker that is not live is reported missing at once.
func testTargetedCommand(t *testing.T, h Harness) {
	d := open(t, h)
	for _, id := range []string{"w1", "w2", "w3"} {
		d.startWorker(stem.WorkerConfig{ID: id})
	}
	ctx := context.Background()
	r, err := d.ctl.Ping(ctx, target("w2"))
	if err != nil {
		t.Fatal(err)
	}
	if got := replyIDs(r); !slices.Equal(got, []string{"w2"}) || len(r.Missing) != 0 {
		t.Fatalf("ping to w2: replies from %v, missing %v", got, r.Missing)
	}
	i, err := d.ctl.Inspect(ctx, target("w3"), false)
	if err != nil {
		t.Fatal(err)
	}
	if got := replyIDs(i); !slices.Equal(got, []string{"w3"}) || i.Replies[0].Status != stemtype.ReplyOK {
		t.Fatalf("inspect of w3: replies %+v", i.Replies)
	}
	g, err := d.ctl.Ping(ctx, target("w1", "ghost"))
	if err != nil {
		t.Fatal(err)
	}
	if got := replyIDs(g); !slices.Equal(got, []string{"w1"}) || !slices.Equal(g.Missing, []string{"ghost"}) ||
		!slices.Equal(g.NotLive, []string{"ghost"}) {
		t.Fatalf("ping to w1 and ghost: replies from %v, missing %v, not live %v", got, g.Missing, g.NotLive)
	}
}

// A worker that dies holding a task (here: a consumer that claims it with
// a short lease, then neither renews, acknowledges nor releases it, which
// is all a dead worker leaves behind) loses it once its lease expires:
// another worker finishes the work, and the dead one's late
// acknowledgement is refused.
func testDeadWorkerLeaseExpires(t *testing.T, h Harness) {
	d := open(t, h)
	ran := make(chan string, 2)
	d.reg.MustAdd(stem.Task{Name: "work", Run: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		ran <- tc.TaskID()
		return "done", nil
	}})
	id := d.enqueue("work", stem.EnqueueOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	ds, err := d.roles.Broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{stemtype.DefaultQueue},
		Consumer: "dead", Max: 1, Lease: h.Capabilities.ShortLease, Wait: waitBound})
	if err != nil || len(ds) != 1 || ds[0].Envelope == nil || ds[0].Envelope.ID != id {
		t.Fatalf("the dead worker's claim: %+v %v", ds, err)
	}
	d.startWorker(stem.WorkerConfig{ID: "alive"})
	res := d.wait(id)
	if res.State != stemtype.StateSucceeded || string(res.Result) != `"done"` || res.WorkerID != "alive" {
		t.Fatalf("got %+v", res)
	}
	if got := <-ran; got != id {
		t.Fatalf("ran %s, want %s", got, id)
	}
	if err := d.roles.Broker.Ack(ctx, ds[0]); !errors.Is(err, stemdriver.ErrLeaseLost) {
		t.Fatalf("the dead worker's late ack: %v, want ErrLeaseLost", err)
	}
}

// A worker shutting down warmly releases at once a task it claimed and has
// not started, so another worker runs it while the first still lets its
// running task finish.
func testWarmShutdownReleasesUnstarted(t *testing.T, h Harness) {
	d := open(t, h)
	gate := make(chan struct{})
	blockStarted := make(chan struct{})
	d.reg.MustAdd(stem.Task{Name: "block", Run: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		close(blockStarted)
		<-gate
		return "finished", nil
	}})
	ranOn := make(chan string, 2)
	d.reg.MustAdd(stem.Task{Name: "next", Run: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		ranOn <- tc.TaskID()
		return nil, nil
	}})
	// The first worker's lease outlasts the whole test: only a release
	// lets another worker claim what it holds.
	_, stop1 := d.startWorker(stem.WorkerConfig{ID: "w1", Concurrency: 1, Prefetch: 1, EagerPrefetch: true,
		Lease: 10 * time.Minute, ShutdownTimeout: 10 * time.Minute})
	release := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(release) // before the worker stops, should the case fail
	blocker := d.enqueue("block", stem.EnqueueOptions{})
	<-blockStarted
	next := d.enqueue("next", stem.EnqueueOptions{})
	d.waitDepth(stemtype.DefaultQueue, 0) // w1 holds next in its prefetch
	stopped := make(chan struct{})
	go func() { stop1(); close(stopped) }()
	t.Cleanup(func() { release(); <-stopped }) // w1's Run has returned when the case ends
	d.startWorker(stem.WorkerConfig{ID: "w2"})
	res := d.wait(next)
	if res.State != stemtype.StateSucceeded || res.WorkerID != "w2" || res.Attempt != 0 {
		t.Fatalf("the task released at shutdown: %+v", res)
	}
	release()
	<-stopped
	if r := d.wait(blocker); r.State != stemtype.StateSucceeded || r.WorkerID != "w1" || string(r.Result) != `"finished"` {
		t.Fatalf("the task running at shutdown: %+v", r)
	}
	if got := <-ranOn; got != next {
		t.Fatalf("ran %s, want %s", got, next)
	}
	noneOf(t, ranOn, "the released task ran twice")
}

// Two namespaces on one backend share nothing: worker ids, tasks, revokes
// and broadcasts of one never reach the other.
func testNamespaceIsolation(t *testing.T, h Harness) {
	a, b := open(t, h), open(t, h)
	ran := make(chan string, 8) // "<namespace>/<task id>"
	for _, d := range []*deployment{a, b} {
		d.reg.MustAdd(stem.Task{Name: "probe", Run: func(tc *stem.TaskContext, _ stem.Args) (any, error) {
			ran <- d.ns + "/" + tc.TaskID()
			return d.ns, nil
		}})
		// The same worker id in both: a live id of one namespace does not
		// stop a worker of the other from starting.
		d.startWorker(stem.WorkerConfig{ID: "w"})
	}
	ctx := context.Background()
	for _, d := range []*deployment{a, b} {
		id := d.enqueue("probe", stem.EnqueueOptions{})
		if res := d.wait(id); res.State != stemtype.StateSucceeded || string(res.Result) != `"`+d.ns+`"` {
			t.Fatalf("task of %s: %+v", d.ns, res)
		}
		if got := <-ran; got != d.ns+"/"+id {
			t.Fatalf("task %s of %s ran as %s", id, d.ns, got)
		}
		s, err := d.ctl.Stats(ctx, target())
		if err != nil {
			t.Fatal(err)
		}
		var st stemtype.StatsReply
		if len(s.Replies) != 1 || json.Unmarshal(s.Replies[0].Payload, &st) != nil || st.Namespace != d.ns ||
			!slices.Equal(s.Live, []string{"w"}) {
			t.Fatalf("broadcast stats in %s: %+v (%+v)", d.ns, s, st)
		}
	}
	// A revoke in a of an id that b then uses: b's task runs.
	shared := stem.NewTaskID()
	if _, err := a.ctl.RevokeTasks(ctx, target(), stem.RevokeOptions{TaskIDs: []string{shared}, Reason: "only in a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.client.Enqueue(ctx, "probe", nil, stem.EnqueueOptions{ID: shared}); err != nil {
		t.Fatal(err)
	}
	if res := b.wait(shared); res.State != stemtype.StateSucceeded {
		t.Fatalf("task %s of %s, revoked in %s only: %+v", shared, b.ns, a.ns, res)
	}
	if got := <-ran; got != b.ns+"/"+shared {
		t.Fatalf("ran %s, want %s/%s", got, b.ns, shared)
	}
	if r, err := a.roles.Results.Get(ctx, shared); err == nil {
		t.Fatalf("a's result backend holds b's task: %+v", r)
	}
	for _, c := range []struct {
		d    *deployment
		want int
	}{{a, 1}, {b, 0}} {
		recs, err := c.d.roles.Revokes.List(ctx, c.d.ns)
		if err != nil || len(recs) != c.want {
			t.Fatalf("revoke store of %s: %+v %v, want %d record(s)", c.d.ns, recs, err, c.want)
		}
		i, err := c.d.ctl.InspectWith(ctx, target(), stemtype.InspectRequest{IncludeRevoked: true})
		if err != nil {
			t.Fatal(err)
		}
		var ir stemtype.InspectReply
		if len(i.Replies) != 1 || json.Unmarshal(i.Replies[0].Payload, &ir) != nil || ir.RevokedTotal != c.want {
			t.Fatalf("inspect in %s: %+v (%+v), want %d revoke(s) held", c.d.ns, i, ir, c.want)
		}
	}
	noneOf(t, ran, "after every task was accounted for")
}
