// Package systemtest is the system-level suite every backend runs: the real
// stem.Worker, stem.Client and stem.Controller over a backend's four
// drivers, checking what a user sees (results, retries and failures,
// revokes and terminate, final states that stay final, the control plane,
// leases and shutdown, one worker per id, namespace and scope isolation,
// fair dispatch, and the worker's conduct when one driver fails) rather
// than what one driver promises (that is stemdrivertest's job).
//
// A backend wires it in a few lines:
//
//	func TestSystem(t *testing.T) {
//		systemtest.Run(t, systemtest.Harness{
//			Open: func(t *testing.T, namespace string) systemtest.Roles {
//				// open the four roles in namespace, register their Close
//				// (and the deletion of the namespace's data) with t.Cleanup
//			},
//			OpenElsewhere: func(t *testing.T, namespace string) systemtest.Roles {
//				// the same in a second scope: another database, file or hub
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
// crosses between them. Cases that inject a driver fault (an outage, a lost
// lease, a hung call) wrap the backend's real drivers in a wrapper of the
// stemdriver interface, so the fault is the same on every backend and the
// rest of the path is the backend's own. Cases wait on events (channels
// closed by handlers, Client.Wait, control replies); where only a state can
// be polled, the deadline is a failure bound, never a synchronisation.
//
// The cases live in files by theme (results.go, client.go, revoke.go,
// finalstate.go, control.go, shutdown.go, faults.go, presence.go,
// isolation.go, poison.go, backpressure.go, signing.go); Run's table lists
// them all.
package systemtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
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
	// OpenElsewhere opens namespace like Open, but in a second backend
	// scope that shares nothing with Open's: another database of the same
	// server, another file, another hub. The scope isolation case runs two
	// deployments with the same namespace and worker ids, one in each
	// scope, and checks that nothing crosses between them, even where the
	// backend's own mechanism is server-wide (Redis pub/sub). Optional:
	// without it that case is skipped, saying so.
	OpenElsewhere func(t *testing.T, namespace string) Roles
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
		// Results, retries and failures (results.go).
		{"EnqueueAndResult", testEnqueueAndResult},
		{"RetryThenSucceed", testRetryThenSucceed},
		{"RetryToFinalFailure", testRetryToFinalFailure},
		{"NoRetryFailsAtOnce", testNoRetryFailsAtOnce},
		{"PanicIsRecordedFailure", testPanicIsRecordedFailure},
		{"PanicStormLeavesWorkerWhole", testPanicStormLeavesWorkerWhole}, // panicstorm.go
		{"UnknownTaskIsRecordedFailure", testUnknownTaskIsRecordedFailure},
		{"UnknownTaskRunsAfterRollingDeploy", testUnknownTaskRunsAfterRollingDeploy},
		{"ArgumentsThatDoNotDecodeFailWithoutRetry", testArgumentsThatDoNotDecodeFailWithoutRetry},
		{"CountdownDelaysTask", testCountdownDelaysTask},
		{"TimeLimitFailsAttempt", testTimeLimitFailsAttempt},
		{"ProgressNaNIsRefusedAndTheTaskEnds", testProgressNaNIsRefusedAndTheTaskEnds},
		{"RawJSONArgsAndResults", testRawJSONArgsAndResults},
		// User code that panics after the handler returned (poison.go).
		{"ResultThatPanicsWhenEncodedFailsTheTask", testResultThatPanicsWhenEncodedFailsTheTask},
		{"ErrorThatPanicsFailsTheTask", testErrorThatPanicsFailsTheTask},
		{"RetryPolicyThatPanicsFallsBackToDefault", testRetryPolicyThatPanicsFallsBackToDefault},
		// Enqueueing over a failing broker or result backend (client.go).
		{"EnqueueBatchPartialPublishReturnsIDs", testEnqueueBatchPartialPublishReturnsIDs},
		{"EnqueueBatchPendingFailurePublishesNothing", testEnqueueBatchPendingFailurePublishesNothing},
		{"OversizedPayload", testOversizedPayload}, // payload.go
		// Revoke and terminate (revoke.go).
		{"RevokeQueuedTask", testRevokeQueuedTask},
		{"RevokeBeforeWorkerStarts", testRevokeBeforeWorkerStarts},
		{"RevokeOfPrefetchedTaskIsMarkedAtOnce", testRevokeOfPrefetchedTaskIsMarkedAtOnce},
		{"RevokeWithoutTerminateLetsRunningTaskFinish", testRevokeWithoutTerminateLetsRunningTaskFinish},
		{"NewerRevokeAddsTerminate", testNewerRevokeAddsTerminate},
		{"RevokeReportsUnknownIDs", testRevokeReportsUnknownIDs},
		{"RevokeByName", testRevokeByName},
		{"QueuePauseAndResume", testQueuePauseAndResume},
		{"QueuePauseReachesWorkerByResync", testQueuePauseReachesWorkerByResync},
		{"ClaimUnderWayAtPauseStartsNothing", testClaimUnderWayAtPauseStartsNothing},
		{"ControllerDefaultExpiry", testControllerDefaultExpiry},
		{"TerminateInline", testTerminateInline},
		{"TerminateIsolatedKillAfter", testTerminateIsolatedKillAfter},
		// Final states are final (finalstate.go).
		{"DeliveryOfFinishedTaskIsAcknowledgedWithoutRunning", testDeliveryOfFinishedTaskIsAcknowledgedWithoutRunning},
		{"FirstDeliveryReadsNoResult", testFirstDeliveryReadsNoResult},
		{"ClaimedTasksRunWhenFinalCheckFails", testClaimedTasksRunWhenFinalCheckFails},
		{"ClaimCheckUsesFinalGetter", testClaimCheckUsesFinalGetter},
		{"DuplicateCopyInSameBatchNeverReplacesFinalState", testDuplicateCopyInSameBatchNeverReplacesFinalState},
		{"RevokeOfTaskWhoseStartIsNotRecordedYetKeepsItsOutcome", testRevokeOfTaskWhoseStartIsNotRecordedYetKeepsItsOutcome},
		{"TargetedRevokeNeverMarksTaskOfAnotherWorker", testTargetedRevokeNeverMarksTaskOfAnotherWorker},
		// The control plane (control.go).
		{"BroadcastReachesEveryWorker", testBroadcastReachesEveryWorker},
		{"TargetedCommand", testTargetedCommand},
		{"BroadcastListsSilentLiveWorkerAsMissing", testBroadcastListsSilentLiveWorkerAsMissing},
		{"CommandToWorkerNotLiveFailsFast", testCommandToWorkerNotLiveFailsFast},
		{"MalformedControlMessageAnsweredWorkerKeepsWorking", testMalformedControlMessageAnsweredWorkerKeepsWorking},
		{"HostileControlCommandsAnsweredWorkerKeepsServing", testHostileControlCommandsAnsweredWorkerKeepsServing}, // hostilecontrol.go
		{"StatsCountersAfterKnownWorkload", testStatsCountersAfterKnownWorkload},
		{"InspectRevokedOnlyWhenAskedAndLimited", testInspectRevokedOnlyWhenAskedAndLimited},
		{"CommandWithoutPresenceFallsBackAndLogs", testCommandWithoutPresenceFallsBackAndLogs},
		{"RevokeReportsMarkCancelledErrors", testRevokeReportsMarkCancelledErrors},
		// Leases and shutdown (shutdown.go).
		{"DeadWorkerLeaseExpires", testDeadWorkerLeaseExpires},
		{"CutOffWorkerLosesItsTask", testCutOffWorkerLosesItsTask},
		{"FrozenWorkerLearnsItsTaskWasReclaimed", testFrozenWorkerLearnsItsTaskWasReclaimed}, // reclaim.go
		{"LeaseRenewedWhileTaskRuns", testLeaseRenewedWhileTaskRuns},
		{"ExtendLeaseNeverShortensTheLease", testExtendLeaseNeverShortensTheLease},
		{"WarmShutdownReleasesUnstarted", testWarmShutdownReleasesUnstarted},
		{"GracefulShutdownFinishesInflightTask", testGracefulShutdownFinishesInflightTask},
		{"ShutdownPastGraceReleasesTaskToAnotherWorker", testShutdownPastGraceReleasesTaskToAnotherWorker},
		{"RunWaitsForReleaseUnderWay", testRunWaitsForReleaseUnderWay},
		// Driver faults the worker survives (faults.go).
		{"OutcomeThatCannotBeRecordedIsNotAcknowledged", testOutcomeThatCannotBeRecordedIsNotAcknowledged},
		{"TaskLostInPrefetchIsNotStarted", testTaskLostInPrefetchIsNotStarted},
		{"RevokeDuringWorkerStartIsHonoured", testRevokeDuringWorkerStartIsHonoured},
		{"ShutdownIsBoundedWhenTheBrokerHangs", testShutdownIsBoundedWhenTheBrokerHangs},
		{"SameReceiptInTwoQueues", testSameReceiptInTwoQueues},
		{"WorkerStartsWhenRevokesCannotBePruned", testWorkerStartsWhenRevokesCannotBePruned},
		{"InlineExtendLeaseFollowsTaskContext", testInlineExtendLeaseFollowsTaskContext},
		{"ProgressNeverBlocksOnHungResults", testProgressNeverBlocksOnHungResults}, // backpressure.go
		// One worker per id (presence.go).
		{"WorkerRefusesLiveID", testWorkerRefusesLiveID},
		{"WorkerStopsWhenIDTakenWhileRunning", testWorkerStopsWhenIDTakenWhileRunning},
		// Isolation (isolation.go).
		{"NamespaceIsolation", testNamespaceIsolation},
		{"ScopeIsolation", testScopeIsolation},
		// Signed messages (signing.go).
		{"SigningTasks", testSigningTasks},
		{"SigningRevokes", testSigningRevokes},
		{"SigningReplay", testSigningReplay},
		// Fair dispatch (fair.go).
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
	// A retry would wait in the queue for an hour: the case sees it.
	stem.Register(reg, taskSpinIsolated, func(tc *stem.TaskContext, _ stem.Args) (any, error) {
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
	}, stem.TaskOptions{Isolated: true, MaxRetries: 5, RetryPolicy: stem.ExponentialBackoff{Base: time.Hour}})
	stem.Register(reg, taskPIDIsolated, func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		return pidData{PID: os.Getpid()}, nil
	}, stem.TaskOptions{Isolated: true})
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
	return openWith(t, h.Open, newNamespace())
}

// openWith opens namespace ns with opener (Harness.Open or OpenElsewhere).
func openWith(t *testing.T, opener func(*testing.T, string) Roles, ns string) *deployment {
	t.Helper()
	r := opener(t, ns)
	if r.Broker == nil || r.Results == nil || r.Revokes == nil || r.Control == nil {
		t.Fatalf("systemtest: the harness opened a nil role: %+v", r)
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

// startWorker runs a worker of the deployment until the test ends (or
// stop is called; stop returns once Run returned) and waits until it is
// ready. Tasks must be registered before.
func (d *deployment) startWorker(cfg stem.WorkerConfig) (*stem.Worker, func()) {
	d.t.Helper()
	w := d.newWorker(cfg)
	return w, RunWorker(d.t, w)
}

// startWorkerWith is startWorker with a registry of its own: a worker of
// another version of the program.
func (d *deployment) startWorkerWith(reg *stem.Registry, cfg stem.WorkerConfig) (*stem.Worker, func()) {
	d.t.Helper()
	w := NewWorker(d.t, d.ns, reg, d.roles, cfg)
	return w, RunWorker(d.t, w)
}

// newWorker returns a worker of the deployment with cfg, not started (see
// NewWorker).
func (d *deployment) newWorker(cfg stem.WorkerConfig) *stem.Worker {
	d.t.Helper()
	return NewWorker(d.t, d.ns, d.reg, d.roles, cfg)
}

// NewWorker returns a worker of namespace ns and registry reg with cfg,
// not started. A role cfg sets (a wrapper around one of r's, injecting a
// fault) is kept; the others are r's. Without a logger it logs nothing,
// and it claims with a short ClaimWait, so that tests stop quickly.
func NewWorker(t testing.TB, ns string, reg *stem.Registry, r Roles, cfg stem.WorkerConfig) *stem.Worker {
	t.Helper()
	cfg.Namespace, cfg.Registry = ns, reg
	if cfg.Broker == nil {
		cfg.Broker = r.Broker
	}
	if cfg.Results == nil {
		cfg.Results = r.Results
	}
	if cfg.Revokes == nil {
		cfg.Revokes = r.Revokes
	}
	if cfg.Control == nil {
		cfg.Control = r.Control
	}
	if cfg.Logger == nil {
		cfg.Logger = quiet()
	}
	if cfg.ClaimWait == 0 {
		cfg.ClaimWait = 50 * time.Millisecond
	}
	w, err := stem.NewWorker(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return w
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
	return d.enqueueWith(task, nil, opts)
}

// enqueueWith enqueues task with args.
func (d *deployment) enqueueWith(task string, args any, opts stem.EnqueueOptions) string {
	d.t.Helper()
	id, err := d.client.Enqueue(context.Background(), task, args, opts)
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

// await returns the next value of ch, failing t should none come within
// the suite's bound (a handler that never started, a fault never hit).
func await[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitBound):
		t.Fatalf("never: %s", what)
		panic("unreachable")
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

// gatedTask registers name as a task that sends its id on started once it
// runs, then blocks until release is called (or its context ends). The
// case registers release with t.Cleanup after it started its workers, so
// that it runs before they stop, should the case fail.
func gatedTask(d *deployment, name string, started chan<- string) (release func()) {
	gate := make(chan struct{})
	stem.Register(d.reg, name, func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		started <- tc.TaskID()
		select {
		case <-gate:
			return "released", nil
		case <-tc.Done():
			return nil, tc.Err()
		}
	}, stem.TaskOptions{})
	return sync.OnceFunc(func() { close(gate) })
}
