package stem

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/stem-go/stem/internal/jobs"
	"github.com/stem-go/stem/internal/revokecache"
	"github.com/stem-go/stem/internal/settle"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// WorkerConfig configures a Worker. Zero values take the documented
// defaults.
type WorkerConfig struct {
	// ID identifies the worker to the control plane. Default: host-pid-rand.
	ID string
	// Namespace the worker belongs to. Default: "stem". The drivers must
	// have been opened with the same namespace.
	Namespace string
	// Queues the worker claims from, in priority order. Default: the
	// queues named by the registry's tasks.
	Queues []string
	// Concurrency is how many tasks run at once, at most 1,048,576.
	// Default: 10.
	Concurrency int
	// Prefetch caps how many claimed tasks may wait for a free slot beyond
	// those running, so that claims of short tasks are batched. Default:
	// 4 × Concurrency (Celery's default multiplier). The worker uses the
	// room only while its recent tasks run shorter than a few claim round
	// trips (a no-op drain: one claim per batch, not per task); for longer
	// tasks, and until its first task finished, it claims for its free
	// slots only, so a long task never waits behind a busy worker while
	// another has a free slot. Tasks that wait in the buffer while every
	// slot stays busy for about 100ms are handed back to the broker for
	// other workers (see "Fair dispatch" in docs/architecture.md, and
	// `stem worker inspect --reserved`). At most 1,048,576.
	Prefetch int
	// EagerPrefetch makes the worker claim up to Concurrency + Prefetch
	// whatever its tasks' run time and never hand waiting tasks back: the
	// behaviour before fair dispatch (Celery's default, without -O fair).
	// A task may then wait behind this worker's busy slots while another
	// worker idles; use it only where every task is short, or for a single
	// worker.
	EagerPrefetch bool
	// Registry holds the tasks the worker runs. Required.
	Registry *Registry
	// Broker the worker claims from. Required.
	Broker stemdriver.Broker
	// Results records task states; optional.
	Results stemdriver.ResultBackend
	// Revokes is the durable revoke store loaded at start-up and re-synced
	// periodically; optional.
	Revokes stemdriver.RevokeStore
	// Control carries control commands (ping, inspect, stats, revoke);
	// optional.
	Control stemdriver.ControlTransport
	// Executor runs tasks registered with an isolated entrypoint (see
	// isolated.Pool). Without one such tasks fail with a clear error. An
	// executor's own shutdown grace should be shorter than ShutdownTimeout,
	// so that a task cancelled at shutdown ends before it is released.
	Executor Executor
	// Lease is how long a claimed task stays invisible to other workers
	// between renewals. The worker renews leases of every task it holds,
	// so it only matters when the worker dies: then its tasks are
	// re-claimed at most about one Lease after it died. Default:
	// DefaultLease.
	Lease time.Duration
	// ClaimWait is how long one claim blocks when no task is ready.
	// Default: 1s.
	ClaimWait time.Duration
	// ShutdownTimeout is the grace period in-flight tasks get after
	// shutdown begins; then their contexts are cancelled with cause
	// ErrWorkerShutdown and unfinished tasks are released to the broker.
	// Default: 10s.
	ShutdownTimeout time.Duration
	// RevokeSyncInterval is how often the revoke set is re-read from the
	// store, so that a missed control message changes nothing. Default:
	// 30s.
	RevokeSyncInterval time.Duration
	// PresenceInterval is how often the worker announces itself on the
	// control transport (with a time-to-live of three intervals). Default:
	// 5s.
	PresenceInterval time.Duration
	// Logger defaults to slog.Default.
	Logger *slog.Logger
	// Stores describes where Broker, Results, Revokes and Control were
	// opened, as URLs with every secret redacted (stemurl.URLs.Stores);
	// optional. The worker only logs it at start and reports it in stats,
	// so that an operator sees when a CLI and a fleet resolved different
	// stores. Never put a password here.
	Stores *stemtype.StoreInfo
	// Observer receives the worker's events for metrics (see
	// stemmetrics); optional. Without one the worker makes no call.
	Observer Observer
	// UnknownTaskRetries is how many times a task whose name no handler of
	// Registry knows is retried before it fails with ErrUnknownTask: in a
	// rolling deploy a worker of the old version may claim a task only the
	// new version knows, and the retries give a worker that knows it time
	// to take it. The count is kept apart from the task's own attempts
	// (UnknownTaskRetriesHeader). Default: 5; negative: fail at once.
	UnknownTaskRetries int
	// UnknownTaskBackoff chooses the delay before each of those retries.
	// Default: ExponentialBackoff{Base: 10s, Max: 2m, Jitter: 0.2}, so that
	// with the default 5 retries such a task fails about 4 minutes after
	// its first claim (10s, 20s, 40s, 80s, 120s, less the jitter).
	UnknownTaskBackoff RetryPolicy
	// MaxPayload is the largest task arguments, in bytes of their JSON
	// encoding, the worker runs. A task with larger ones (enqueued by a
	// producer with a higher limit or none) is never handed to its handler
	// nor decoded: it is recorded failed (kind "payload_too_large", naming
	// the size and the limit) and moved to the dead letters, where it can
	// be read or replayed. Default: DefaultMaxPayload (1 MiB); negative: no
	// limit. Keep it at least the producers' ClientConfig.MaxPayload.
	MaxPayload int
	// FailFast makes Run return at once when the control transport or the
	// revoke store cannot be reached at start. By default Run waits for
	// them instead, claiming nothing, and retries with a capped
	// exponential backoff (100ms doubling up to 2s, with jitter), logging
	// a warning naming the store, its address (from Stores) and the error
	// at each attempt, until they answer or ctx ends: a fleet started
	// before its stores, or during an outage, starts consuming within a
	// few seconds of their return. `stem worker start --fail-fast` sets it.
	FailFast bool
	// TracerProvider, when set, makes the worker trace every run: a span
	// "stem.run TASK" (kind consumer), the child of the producer's span
	// when the task's envelope carries one (Client.Enqueue adds the span
	// context of its ctx, W3C Trace Context in the headers), with the
	// task's id, name, attempt and queue and the worker's id as
	// attributes. The task's context carries the span, and the logs of the
	// run (TaskContext.Logger, the worker's lines about the task) carry
	// its trace_id. Without one the worker does not trace.
	TracerProvider trace.TracerProvider
	// SigningKeys, when set, make the worker act only on what they sign
	// (see docs/signing.md): it refuses control commands that are not
	// signed, or replayed, with an error reply; dead-letters tasks whose
	// envelope is not signed; and ignores revoke records that are not
	// signed, from commands and from the store. It signs the envelopes of
	// retries with the first key. Without keys, anyone who can write to
	// the broker or the revoke store can revoke and terminate every task.
	SigningKeys *SigningKeys
}

func (c *WorkerConfig) setDefaults() error {
	if c.Registry == nil {
		return errors.New("stem: WorkerConfig.Registry is nil")
	}
	if c.Broker == nil {
		return errors.New("stem: WorkerConfig.Broker is nil")
	}
	if c.Concurrency < 0 || c.Prefetch < 0 {
		return errors.New("stem: WorkerConfig.Concurrency and Prefetch must not be negative")
	}
	if c.Concurrency > maxConcurrency || c.Prefetch > maxPrefetch {
		return fmt.Errorf("stem: WorkerConfig.Concurrency must be at most %d and Prefetch at most %d", maxConcurrency, maxPrefetch)
	}
	if c.Namespace == "" {
		c.Namespace = stemtype.DefaultNamespace
	}
	if c.ID == "" {
		host, _ := os.Hostname()
		c.ID = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), NewTaskID()[:6])
	}
	if len(c.Queues) == 0 {
		c.Queues = c.Registry.Queues()
		if len(c.Queues) == 0 {
			c.Queues = []string{stemtype.DefaultQueue}
		}
	}
	if c.Concurrency == 0 {
		c.Concurrency = 10
	}
	if c.Prefetch == 0 {
		c.Prefetch = min(4*c.Concurrency, maxPrefetch)
	}
	if c.Lease <= 0 {
		c.Lease = DefaultLease
	}
	if c.ClaimWait <= 0 {
		c.ClaimWait = time.Second
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.RevokeSyncInterval <= 0 {
		c.RevokeSyncInterval = 30 * time.Second
	}
	if c.PresenceInterval <= 0 {
		c.PresenceInterval = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	switch {
	case c.UnknownTaskRetries == 0:
		c.UnknownTaskRetries = DefaultUnknownTaskRetries
	case c.UnknownTaskRetries < 0:
		c.UnknownTaskRetries = 0
	}
	c.MaxPayload = payloadLimit(c.MaxPayload) // 0 from here on: no limit
	if c.UnknownTaskBackoff == nil {
		c.UnknownTaskBackoff = DefaultUnknownTaskBackoff()
	}
	return nil
}

// DefaultLease is the lease of WorkerConfig.Lease and `stem worker start
// --lease` by default. A worker killed outright (SIGKILL, OOM, a lost
// host) never releases what it holds: its tasks are re-claimed once their
// leases end, at most one lease after the kill (a task claimed or renewed
// just before), plus the claim that finds it (a fraction of a second: on
// every backend a task whose lease expired is claimed before the backlog
// published after it). Ten seconds keeps that within 15 seconds
// (measured through the binary: about 10 s on every backend, see e2e
// TestKilledWorkersTasksReclaimedWithinFifteenSeconds).
//
// Recovery rests on the lease alone, not on presence, for three reasons:
// every backend already re-claims on lease expiry with one semantics, and
// the old holder of a re-claimed delivery always learns it (its next
// ExtendLease, Ack or Retry returns ErrLeaseLost and the running task's
// context is cancelled), so a paused or partitioned worker never runs on
// unaware; presence is optional (no ControlTransport, no presence), may
// live in another store than the broker, and is per worker id while a
// restarted worker of the same id would have to tell its predecessor's
// claims from its own; and a presence time-to-live short enough to free
// tasks within 15 seconds would fence off a paused worker as quickly as
// this lease does, for no gain.
//
// The cost is renewal traffic: the worker renews each held task once a
// third of its lease has passed, looking every quarter lease, so a task
// running longer than about 3.3 s makes one ExtendLease every 3.3 to
// 5.8 s (measured: one every 0.55 lease, 5.5 s; with the old 30 s: every
// 10 to 17.5 s), one small write per long-running task; tasks shorter
// than that make none. And a worker cut off from its broker (while other workers are
// not), or paused, for more than 4 to 6.7 s (the lease left at a
// renewal) may see a task re-claimed and run by another worker; its own
// run is then cancelled with ErrLeaseLost at its next renewal. Where such
// pauses are expected, raise Lease, trading slower recovery from dead
// workers for it.
const DefaultLease = 10 * time.Second

// DefaultUnknownTaskRetries is WorkerConfig.UnknownTaskRetries's default.
const DefaultUnknownTaskRetries = 5

// DefaultUnknownTaskBackoff returns WorkerConfig.UnknownTaskBackoff's
// default: 10s doubling up to 2 minutes, with 20% jitter.
func DefaultUnknownTaskBackoff() RetryPolicy {
	return ExponentialBackoff{Base: 10 * time.Second, Max: 2 * time.Minute, Jitter: 0.2}
}

// The largest Concurrency and Prefetch a worker accepts: far beyond what
// one process runs, low enough that the hand-off queue's size
// (Concurrency + Prefetch, 4 × Concurrency by default) never overflows.
const (
	maxConcurrency = 1 << 20
	maxPrefetch    = 1 << 20
)

// Worker claims tasks from a broker and runs them, answering control
// commands and honouring revokes while it runs. Build one with NewWorker and
// call Run once.
type Worker struct {
	// The engine's data flows one way: fetch (this file) claims
	// deliveries into the job table (internal/jobs), the runners run them
	// (process, worker_exec.go) and hand their outcomes to the settlement
	// writer (internal/settle) or release them (settleBare,
	// worker_settle.go). The control plane (worker_control.go) reads and
	// signals the jobs through the table. Each file calls only into the
	// files and packages below it (docs/architecture.md).
	cfg     WorkerConfig
	log     *slog.Logger
	revokes *revokecache.Cache
	jobs    *jobs.Table // every delivery claimed and not yet forgotten
	writer  *settle.Writer
	bare    bareReleases // settleBare calls under way
	hooks   testHooks    // set before Run by tests only (export_test.go)
	sig     workerSigning

	outstanding atomic.Int64  // claimed deliveries whose handler has not finished
	space       chan struct{} // signalled when outstanding drops
	// pauses is signalled when a pause or resume may have changed the
	// queues to claim from (a command, a re-sync).
	pauses   chan struct{}
	fair     *fetchPolicy // what fetch claims, and when it hands tasks back
	stopping atomic.Bool
	ran      atomic.Bool
	ready    chan struct{}
	started  time.Time
	instance string       // random per Run: this run's presence token
	tracer   trace.Tracer // nil unless WorkerConfig.TracerProvider is set
	// revokeCursor is the revoke store's cursor after the last sync
	// (syncRevokeSet), for stores that list changes.
	revokeCursor string
	// pruneRefused is set while the revoke store refuses the prune (a
	// store this worker may read but not write): warned once, not at
	// every sync.
	pruneRefused bool
	// stopRun ends Run's context (set by Run before any helper starts);
	// shutdownMode is the mode a shutdown command asked for: 0 none, 1
	// warm, 2 soft, 3 hard.
	stopRun      context.CancelCauseFunc
	shutdownMode atomic.Int32

	processed, succeeded, failed, retried, cancelled atomic.Int64
}

// NewWorker validates cfg and returns a worker.
func NewWorker(cfg WorkerConfig) (*Worker, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	w := &Worker{
		cfg:     cfg,
		log:     cfg.Logger.With("worker_id", cfg.ID),
		revokes: revokecache.New(),
		jobs:    jobs.NewTable(),
		space:   make(chan struct{}, 1),
		pauses:  make(chan struct{}, 1),
		ready:   make(chan struct{}),
		fair:    newFetchPolicy(cfg.Concurrency, cfg.Prefetch, cfg.EagerPrefetch),
		sig:     workerSigning{keys: cfg.SigningKeys},
	}
	if cfg.TracerProvider != nil {
		w.tracer = cfg.TracerProvider.Tracer(tracerName, trace.WithInstrumentationVersion(Version()))
	}
	w.writer = settle.New(settle.Config{Broker: cfg.Broker, Results: cfg.Results, Logger: w.log, Done: w.jobs.Forget})
	return w, nil
}

// testHooks are the worker's seams for tests (see export_test.go); each is
// nil outside tests.
type testHooks struct {
	progressChecked func(taskID string) // Progress saw the task unsettled, before it queues
	settled         func(taskID string) // the outcome went to the result writer
}

// Ready is closed once Run has subscribed to control commands, loaded the
// revoke set and started claiming. It is never closed when Run fails before
// that.
func (w *Worker) Ready() <-chan struct{} { return w.ready }

// ID returns the worker's id.
func (w *Worker) ID() string { return w.cfg.ID }

// Run loads the revoke set (waiting, without claiming, while the revoke
// store or the control transport cannot be reached, unless FailFast),
// then claims and runs tasks until ctx is cancelled, and then shuts down
// warmly: it stops claiming, releases claimed
// tasks that have not started, gives running tasks ShutdownTimeout to finish,
// cancels the rest with cause ErrWorkerShutdown and releases them to the
// broker. It returns nil after a clean shutdown. Run may be called once.
// With a control transport, Run refuses to start, before it claims
// anything, while another live worker of the namespace holds the id: the
// error matches stemdriver.ErrWorkerIDTaken and names that worker's host
// and pid. A running worker that finds its id taken by another live
// instance (its own presence lapsed, as in a long pause or a partition)
// shuts down warmly and returns such an error too: two workers never keep
// answering to one id.
func (w *Worker) Run(ctx context.Context) error {
	if !w.ran.CompareAndSwap(false, true) {
		return errors.New("stem: Worker.Run called twice")
	}
	ctx, stopRun := context.WithCancelCause(ctx)
	defer stopRun(nil)
	w.stopRun = stopRun
	w.started, w.instance = time.Now(), NewTaskID()
	// bg outlives ctx: it carries the work that must finish during
	// shutdown (result writes, acks, lease renewal).
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()

	// Subscribe before loading the revoke set, so that a revoke stored and
	// published in between is not missed: it waits in the subscription
	// until the control loop starts.
	var sub stemdriver.ControlSubscription
	if w.cfg.Control != nil {
		err := w.untilReachable(ctx, "control transport", w.storeAddr("control"), func(ctx context.Context) error {
			var err error
			sub, err = w.cfg.Control.Subscribe(ctx, w.cfg.ID)
			return err
		})
		if err != nil {
			return fmt.Errorf("stem: worker %s: subscribe to control: %w", w.cfg.ID, err)
		}
		defer sub.Close()
	}
	// No task is claimed before the revoke set is loaded: a revoked task
	// would run. While the store cannot be reached, Run waits and retries
	// (untilReachable), unless FailFast.
	if w.cfg.Revokes != nil {
		err := w.untilReachable(ctx, "revoke store", w.storeAddr("revokes"), func(ctx context.Context) error {
			return w.syncRevokeSet(ctx, true)
		})
		if err != nil {
			return fmt.Errorf("stem: worker %s: load revokes: %w", w.cfg.ID, err)
		}
	}
	if sub != nil {
		if err := w.announceFirst(ctx); err != nil {
			return err // another live worker holds the id
		}
	}

	var aux sync.WaitGroup // helpers that stop with bg
	// The writer's own context ends when its final grace period does, so
	// that no retry outlives the shutdown.
	writerCtx, stopWriter := context.WithCancel(bg)
	defer stopWriter()
	aux.Go(func() { w.writer.Run(writerCtx) })
	aux.Go(func() { w.renewLeases(bg) })
	if sub != nil {
		aux.Go(func() { w.serveControl(bg, sub) })
		aux.Go(func() { w.presence(bg, stopRun) })
	}
	if w.cfg.Revokes != nil {
		aux.Go(func() { w.resyncRevokeSet(bg) })
	}

	work, stopWork := context.WithCancelCause(bg) // parent of task contexts
	defer stopWork(nil)
	ready := make(chan *jobs.Job, w.cfg.Concurrency+w.cfg.Prefetch)
	var runners sync.WaitGroup
	for range w.cfg.Concurrency {
		runners.Go(func() {
			for j := range ready {
				if w.stopping.Load() {
					w.settle(j, nil, settle.Release, nil, "")
				} else {
					start := time.Now()
					w.process(work, j)
					w.fair.finished(start, time.Now())
				}
				w.handlerDone()
			}
		})
	}
	fetchDone := make(chan struct{})
	go func() {
		defer close(fetchDone)
		w.fetch(ctx, ready)
	}()
	close(w.ready)
	started := []any{"namespace", w.cfg.Namespace, "queues", w.cfg.Queues,
		"concurrency", w.cfg.Concurrency, "prefetch", w.cfg.Prefetch}
	if s := w.cfg.Stores; s != nil {
		started = append(started, slog.Group("stores", "broker", s.Broker, "results", s.Results,
			"revokes", s.Revokes, "control", s.Control))
	}
	if k := w.cfg.SigningKeys; k != nil {
		started = append(started, "signing_keys", k.IDs())
	}
	w.log.Info("worker started", started...)

	<-ctx.Done()
	w.log.Info("worker shutting down", "inflight", w.jobs.Running())
	w.stopping.Store(true)
	<-fetchDone
	// Claimed tasks that have not started go back at once, in one
	// release, even while every runner is busy with a long task.
	var unstarted []*jobs.Job
	for drained := false; !drained; {
		select {
		case j := <-ready:
			unstarted = append(unstarted, j)
		default:
			drained = true
		}
	}
	close(ready)
	w.settleBare(settle.Release, unstarted...)
	for range unstarted {
		w.handlerDone()
	}

	runnersDone := make(chan struct{})
	go func() { runners.Wait(); close(runnersDone) }()
	// A soft shutdown cancels running tasks at once; a hard one also
	// releases them without waiting for their handlers.
	graceFor, abandonAfter := w.cfg.ShutdownTimeout, w.cfg.ShutdownTimeout
	switch w.shutdownMode.Load() {
	case 2:
		graceFor = 0
	case 3:
		graceFor, abandonAfter = 0, 0
	}
	grace := time.NewTimer(graceFor)
	defer grace.Stop()
	select {
	case <-runnersDone:
	case <-grace.C:
		n := w.jobs.Running()
		if graceFor == 0 {
			w.log.Info("cancelling running tasks at once (soft or hard shutdown)", "inflight", n)
		} else {
			w.log.Warn("shutdown grace period over: cancelling tasks", "inflight", n)
		}
		stopWork(ErrWorkerShutdown)
		// Handlers that ignore their context cannot be stopped; give them a
		// moment, then release what they hold so other workers re-claim it.
		abandon := time.NewTimer(abandonAfter)
		defer abandon.Stop()
		select {
		case <-runnersDone:
		case <-abandon.C:
			if abandonAfter == 0 {
				w.log.Info("releasing running tasks at once (hard shutdown)", "inflight", w.jobs.Running())
			} else {
				w.log.Error("handlers ignored cancellation: releasing their tasks", "inflight", w.jobs.Running())
			}
			w.releaseAll()
			// Runners that settled meanwhile release outside the result
			// writer; a process exits once Run returned, so their
			// releases finish first (each is bounded by releaseTimeout).
			w.awaitBare()
		}
	}
	// The last results and acknowledgements get one more grace period;
	// what cannot be settled by then is left to lease expiry.
	finalCtx, cancelFinal := context.WithTimeout(writerCtx, w.cfg.ShutdownTimeout)
	context.AfterFunc(finalCtx, stopWriter)
	w.writer.Close(finalCtx)
	cancelFinal()
	stopBG()
	aux.Wait()
	if w.cfg.Control != nil {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		if err := w.cfg.Control.Withdraw(wctx, w.cfg.ID, w.instance); err != nil {
			w.log.Warn("withdraw presence", "err", err)
		}
		cancel()
	}
	w.log.Info("worker stopped", "processed", w.processed.Load())
	if cause := context.Cause(ctx); errors.Is(cause, stemdriver.ErrWorkerIDTaken) {
		return fmt.Errorf("stem: worker %s stopped: %w", w.cfg.ID, cause)
	}
	return nil
}

// fetch claims tasks while there is room for them, as the fetch policy
// (w.fair) allows, and hands them to the runners through ready. A claim
// made while every slot is taken takes only what is ready (it does not
// wait for a publish: a worker with a free slot should get that task);
// when it finds nothing, fetch waits until a slot frees. While tasks wait
// in ready with every slot busy, it checks every quarter of the policy's
// hand-back bound whether to hand them back (handBack).
func (w *Worker) fetch(ctx context.Context, ready chan *jobs.Job) {
	backoff := 100 * time.Millisecond
	// nothingReady: a claim made while every slot was taken found the
	// queue empty; the next waits until a slot frees.
	nothingReady := false
	check := time.NewTimer(time.Hour)
	check.Stop()
	defer check.Stop()
	for ctx.Err() == nil {
		waiting := len(ready) > 0 // every runner is busy
		if waiting {
			w.handBack(ready)
		}
		out := w.outstanding.Load()
		n := w.fair.claimMax(out)
		wait := w.fair.claimWait(out, w.cfg.ClaimWait)
		if wait == 0 && nothingReady {
			n = 0 // every slot is taken and the queue was empty: wait for a slot
		}
		if n == 0 {
			var due <-chan time.Time
			if len(ready) > 0 {
				check.Reset(w.fair.handBackAfter() / 4)
				due = check.C
			}
			select {
			case <-w.space:
				nothingReady = false
			case <-due:
			case <-ctx.Done():
				return
			}
			check.Stop()
			continue
		}
		queues := w.claimQueues(time.Now())
		if len(queues) == 0 {
			// Every queue is paused: wait for a resume.
			select {
			case <-w.pauses:
			case <-ctx.Done():
				return
			}
			continue
		}
		if waiting {
			// Tasks wait for a slot: do not block for long before
			// checking whether to hand them back.
			wait = min(wait, w.fair.handBackAfter()/4)
		}
		if len(queues) < len(w.cfg.Queues) {
			// A resume should not wait out a long claim.
			wait = min(wait, time.Second)
		}
		start := time.Now()
		ds, err := w.cfg.Broker.Claim(ctx, stemdriver.ClaimRequest{
			Queues:   queues,
			Consumer: w.cfg.ID,
			Max:      n,
			Lease:    w.cfg.Lease,
			Wait:     wait,
		})
		// Deliveries returned beside an error are leased all the same: they
		// are run (or, once stopping, released), never dropped.
		now := time.Now()
		if err == nil {
			w.fair.claimed(now.Sub(start), len(ds), n, wait > 0)
		}
		nothingReady = wait == 0 && err == nil && len(ds) == 0
		claimed := w.jobs.Add(ds, w.cfg.Lease, now)
		claimed = w.releasePaused(claimed, now)
		finished := w.finishedBefore(ctx, claimed)
		for i, j := range claimed {
			if st := finished[i]; st != "" {
				// A redelivery (an acknowledgement that was lost, a
				// lease that expired under a slow or dead worker) of a
				// task that already ended, or that the controller marked
				// cancelled on revoke: a final state is final, the task
				// does not run again.
				if st == stemtype.StateCancelled {
					// Honoured here like any revoke met before the start.
					w.cancelled.Add(1)
					w.processed.Add(1)
				}
				w.log.Info("task already "+string(st)+": acknowledged without running", "task_id", j.Env().ID,
					"task", j.Env().Task, "queue", j.D.Queue)
				w.settle(j, nil, settle.Ack, nil, "")
				continue
			}
			w.outstanding.Add(1)
			ready <- j // never blocks: ready holds Concurrency+Prefetch jobs
		}
		if err != nil {
			if ctx.Err() != nil {
				// A claim cut short may have leased messages we never saw;
				// their leases expire and other workers re-claim them.
				return
			}
			w.log.Error("claim failed", "err", err, "retry_in", backoff)
			if !sleepCtx(ctx, backoff) {
				return
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
	}
}

// finishedBefore returns, for each job of a claimed batch, the final state
// the result backend records for its task already ("" when none). Only
// redeliveries (stemdriver.Delivery.Redelivered) are checked, in one
// GetFinalMany (stemdriver.FinalGetter) or GetMany for the batch; a batch
// of first deliveries costs no round trip, which keeps the check off the
// fetch loop's critical path in a normal drain. A first delivery of a task
// that already ended (a duplicate publish) runs again: its outcome cannot
// replace the recorded final state, since the first final state wins in
// every result backend. When the check fails, every job runs
// (at-least-once).
func (w *Worker) finishedBefore(ctx context.Context, js []*jobs.Job) []stemtype.State {
	finished := make([]stemtype.State, len(js))
	if w.cfg.Results == nil || len(js) == 0 {
		return finished
	}
	var ids []string
	for _, j := range js {
		if j.Env() != nil && j.D.Redelivered {
			ids = append(ids, j.Env().ID)
		}
	}
	if len(ids) == 0 {
		return finished
	}
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	var rs []*stemtype.TaskResult
	var err error
	if fg, ok := w.cfg.Results.(stemdriver.FinalGetter); ok {
		rs, err = fg.GetFinalMany(gctx, ids...)
	} else {
		rs, err = w.cfg.Results.GetMany(gctx, ids...)
	}
	cancel()
	if err == nil && len(rs) != len(ids) {
		err = fmt.Errorf("stem: GetMany returned %d results for %d ids", len(rs), len(ids))
	}
	if err != nil {
		if ctx.Err() == nil {
			w.log.Warn("cannot check claimed tasks for a final state: running them", "tasks", len(ids), "err", err)
		}
		return finished
	}
	k := 0
	for i, j := range js {
		if j.Env() == nil || !j.D.Redelivered {
			continue
		}
		if rs[k] != nil && rs[k].State.Final() {
			finished[i] = rs[k].State
		}
		k++
	}
	return finished
}

// handlerDone frees a slot for the fetcher.
func (w *Worker) handlerDone() {
	w.outstanding.Add(-1)
	select {
	case w.space <- struct{}{}:
	default:
	}
}

// handBack hands the tasks waiting in ready back to the broker when the
// policy finds the worker stalled: no slot freed, and the oldest of them
// waited, for the hand-back bound. Another worker with a free slot claims
// them at once; this one claims for its free slots only from then on
// (fetchPolicy.handedBack). Called by fetch alone, so nothing is added to
// ready meanwhile.
func (w *Worker) handBack(ready chan *jobs.Job) {
	now := time.Now()
	if !w.fair.stalled(now, time.Time{}) {
		return // a slot freed lately: the buffer moves
	}
	var oldest time.Time
	for _, j := range w.jobs.Waiting() {
		if oldest.IsZero() || j.ClaimedAt.Before(oldest) {
			oldest = j.ClaimedAt
		}
	}
	if oldest.IsZero() || !w.fair.stalled(now, oldest) {
		return
	}
	var js []*jobs.Job
	for drained := false; !drained; {
		select {
		case j := <-ready:
			js = append(js, j)
		default:
			drained = true
		}
	}
	if len(js) == 0 {
		return // runners took them meanwhile
	}
	w.fair.handedBack()
	w.log.Info("handing back tasks waiting for a slot: every slot stayed busy", "tasks", len(js),
		"waited", now.Sub(oldest).Round(time.Millisecond))
	w.settleBare(settle.Release, js...)
	for range js {
		w.handlerDone()
	}
}
