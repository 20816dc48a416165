package isolated

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// ErrPoolClosed is returned by Execute once Close was called.
var ErrPoolClosed = errors.New("stem: isolated: pool closed")

// PoolConfig configures a Pool. Zero values take the documented defaults.
type PoolConfig struct {
	// Registry is the worker's registry. Required. NewPool checks that the
	// child's registry has an isolated entrypoint for each of its isolated
	// tasks.
	Registry *stem.Registry
	// Size is the most children alive at once, and so the most isolated
	// tasks running at once; set it to the worker's Concurrency. Default:
	// 10, the worker's default concurrency.
	Size int
	// Logger records the pool's events and the children's stderr, with
	// the child's pid as child_pid. Default: slog.Default().
	Logger *slog.Logger
	// Path is the program children run. Default: the worker's own
	// binary, whose main must serve the child role (ServeIfChild, or
	// stemcli.Main which calls it): on Linux /proc/self/exe, which stays
	// the worker's build when a deploy replaces the file; elsewhere
	// os.Executable(). Each child's hello is checked against Registry: a
	// child lacking one of its isolated entrypoints (another build) fails
	// the task with a retryable error and is stopped.
	Path string
	// Args are the children's command-line arguments after the program
	// name. Default: none (the child role is chosen by EnvChild, not by
	// arguments).
	Args []string
	// Env is added to the worker's environment for the children.
	Env []string
	// MaxFrame is the largest frame payload accepted from a child, in
	// bytes; a larger one fails the task and the child is replaced. It is
	// passed to children as EnvMaxFrame. Default: DefaultMaxFrame (16
	// MiB); at most 1 GiB.
	MaxFrame int
	// StartTimeout bounds a child's start, until its hello. Default: 10s.
	StartTimeout time.Duration
	// KillGrace is how long a child gets to exit between SIGTERM and
	// SIGKILL, and to exit on its own once its stdin was closed before it
	// is terminated. Default: 1s.
	KillGrace time.Duration
	// ShutdownGrace is how long a task whose context was cancelled for a
	// reason other than a revoke, its time limit or a lost lease (mainly
	// the worker's shutdown, ErrWorkerShutdown) gets to return after the
	// cancel was relayed to its child, before the child is killed.
	// Default: 2s.
	ShutdownGrace time.Duration
	// WriteTimeout bounds each frame written to a child: a child that
	// stops reading its stdin is broken. Default: 5s.
	WriteTimeout time.Duration
	// MaxTasksPerChild retires a child after it ran that many tasks,
	// bounding what leaks in task code can accumulate. Default: 0, no
	// limit.
	MaxTasksPerChild int
}

func (c *PoolConfig) setDefaults() error {
	if c.Registry == nil {
		return errors.New("stem: isolated: PoolConfig.Registry is nil")
	}
	if c.Size < 0 || c.MaxFrame < 0 || c.MaxTasksPerChild < 0 {
		return errors.New("stem: isolated: PoolConfig.Size, MaxFrame and MaxTasksPerChild must not be negative")
	}
	if c.MaxFrame > maxFrameLimit {
		return fmt.Errorf("stem: isolated: PoolConfig.MaxFrame %d exceeds %d", c.MaxFrame, maxFrameLimit)
	}
	if c.Size == 0 {
		c.Size = 10
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Path == "" {
		exe, err := selfExe()
		if err != nil {
			return fmt.Errorf("stem: isolated: find the worker's executable for PoolConfig.Path: %w", err)
		}
		c.Path = exe
	}
	if c.MaxFrame == 0 {
		c.MaxFrame = DefaultMaxFrame
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = 10 * time.Second
	}
	if c.KillGrace <= 0 {
		c.KillGrace = time.Second
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = 2 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 5 * time.Second
	}
	return nil
}

// Pool is a stem.Executor that runs isolated entrypoints in child
// processes re-executed from the worker's own binary: separate memory,
// messages only, so a crash, a leak or a runaway loop in a task cannot take
// the worker down. Children start on demand up to Size, run one task at a
// time, are reused across tasks and replaced when one dies, breaks the
// protocol or is killed. Build one with NewPool and Close it after the
// worker's Run returned.
type Pool struct {
	cfg   PoolConfig
	hooks hooks
	log   *slog.Logger
	path  string
	name  string // the program, for messages: the file behind /proc/self/exe
	env   []string
	slots chan struct{} // one token per task holding a child

	mu     sync.Mutex
	idle   []*proc
	live   map[*proc]struct{}
	closed bool

	wg      sync.WaitGroup // every goroutine of every child
	started atomic.Int64
	busy    atomic.Int64
}

// selfExePath names, on Linux, the running program's own file.
const selfExePath = "/proc/self/exe"

// hooks are the pool's seams for tests.
type hooks struct {
	// signal sends a signal to a child's process group.
	signal func(p *os.Process, s sig)
	// delivered, if set, is called by a child's reader after it delivered
	// a frame (or the error that ended the stream) to the run loop.
	delivered func(c *proc, in inbound)
	// ckWait, if set, is called when a run that ended waits for a
	// checkpoint still being applied.
	ckWait func()
}

// ErrInChild is returned by NewPool in a process that a Pool started as an
// isolated child: its main did not call ServeIfChild (or stemcli.Main)
// before anything else, and would otherwise start children of its own,
// which would start children of their own, without end.
var ErrInChild = errors.New("stem: isolated: NewPool called in an isolated child process (" + EnvChild + " is set): " +
	"main must call isolated.ServeIfChild (or use stemcli.Main) before anything else")

// NewPool validates cfg and starts one child, so that a binary that does
// not serve the child role, or whose child registry lacks an isolated
// entrypoint the worker's registry declares, fails here rather than at
// the first task. That child stays in the pool for the first task.
//
// In a process started as an isolated child (EnvChild set), NewPool fails
// at once with ErrInChild: the child exits before its hello, and the
// parent's NewPool fails with the child's last output and a hint.
func NewPool(cfg PoolConfig) (*Pool, error) {
	return newPool(cfg, hooks{signal: signalGroup})
}

func newPool(cfg PoolConfig, h hooks) (*Pool, error) {
	if IsChild() {
		return nil, ErrInChild
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	p := &Pool{cfg: cfg, hooks: h, log: cfg.Logger.With("component", "isolated"), path: cfg.Path, name: cfg.Path,
		slots: make(chan struct{}, cfg.Size), live: make(map[*proc]struct{})}
	if exe, err := os.Executable(); err == nil && cfg.Path == selfExePath {
		p.name = exe
	}
	p.env = childEnv(os.Environ(), cfg)
	c, _, err := p.startProc(context.Background())
	if err != nil {
		p.wg.Wait()
		return nil, err
	}
	p.mu.Lock()
	p.idle = append(p.idle, c)
	p.mu.Unlock()
	return p, nil
}

// missingTasks returns the isolated tasks of reg missing from a child's
// hello.
func missingTasks(reg *stem.Registry, tasks []string) []string {
	var missing []string
	for _, name := range isolatedNames(reg) {
		if !slices.Contains(tasks, name) {
			missing = append(missing, name)
		}
	}
	return missing
}

// childEnv is the worker's environment without any protocol variable, plus
// cfg.Env and the protocol variables.
func childEnv(base []string, cfg PoolConfig) []string {
	env := make([]string, 0, len(base)+len(cfg.Env)+3)
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if k != EnvChild && k != EnvMaxFrame && k != EnvLogLevel {
			env = append(env, kv)
		}
	}
	env = append(env, cfg.Env...)
	level := slog.LevelError
	for _, l := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn} {
		if cfg.Logger.Enabled(context.Background(), l) {
			level = l
			break
		}
	}
	return append(env, EnvChild+"="+strconv.Itoa(ProtocolVersion),
		EnvMaxFrame+"="+strconv.Itoa(cfg.MaxFrame), EnvLogLevel+"="+level.String())
}

// PoolStats are a pool's counters.
type PoolStats struct {
	// Size is the most children alive at once.
	Size int
	// Live is how many children are alive (busy or idle).
	Live int
	// Busy is how many tasks hold a child now.
	Busy int
	// Started is how many children the pool started in all; it grows by
	// one each time a child is replaced.
	Started int64
}

// Stats returns the pool's counters.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	live := len(p.live)
	p.mu.Unlock()
	return PoolStats{Size: p.cfg.Size, Live: live, Busy: int(p.busy.Load()), Started: p.started.Load()}
}

// Close stops every child: idle ones exit when their stdin closes, and
// children still running a task are terminated, which fails their Execute.
// Call it after the worker's Run returned. It returns once every child
// was reaped; later calls return at once.
func (p *Pool) Close() error {
	p.mu.Lock()
	already := p.closed
	p.closed = true
	all := make([]*proc, 0, len(p.live))
	for c := range p.live {
		all = append(all, c)
	}
	p.idle = nil
	p.mu.Unlock()
	if !already {
		var wg sync.WaitGroup
		for _, c := range all {
			wg.Go(func() { c.stop(true) })
		}
		wg.Wait()
	}
	p.wg.Wait()
	return nil
}

// forget drops a stopped child from the live set.
func (p *Pool) forget(c *proc) {
	p.mu.Lock()
	delete(p.live, c)
	p.idle = slices.DeleteFunc(p.idle, func(x *proc) bool { return x == c })
	p.mu.Unlock()
}

// acquire takes a slot and a healthy child for a task, starting one if no
// idle child is left, until tc ends.
func (p *Pool) acquire(tc *stem.TaskContext) (*proc, error) {
	select {
	case p.slots <- struct{}{}:
	case <-tc.Done():
		return nil, fmt.Errorf("stem: isolated task %s not started: %w", tc.TaskID(), context.Cause(tc))
	}
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			<-p.slots
			return nil, ErrPoolClosed
		}
		var c *proc
		if n := len(p.idle); n > 0 {
			c, p.idle = p.idle[n-1], p.idle[:n-1]
		}
		p.mu.Unlock()
		if c == nil {
			break
		}
		if c.healthy() {
			p.busy.Add(1)
			return c, nil
		}
		c.stop(false)
		c.log.Warn("isolated child died or broke while idle: replacing it", "status", c.exitStatus())
	}
	c, _, err := p.startProc(tc)
	if err != nil {
		<-p.slots
		p.mu.Lock()
		closed := p.closed
		p.mu.Unlock()
		if closed {
			return nil, ErrPoolClosed // Close stopped the child during its start
		}
		return nil, err
	}
	p.busy.Add(1)
	return c, nil
}

// release returns a child that ran a task to the idle set, or retires it.
func (p *Pool) release(c *proc, reuse bool) {
	p.busy.Add(-1)
	if reuse && p.cfg.MaxTasksPerChild > 0 && c.runs >= uint64(p.cfg.MaxTasksPerChild) {
		c.log.Debug("isolated child reached MaxTasksPerChild: retiring it", "runs", c.runs)
		c.stop(true)
		reuse = false
	}
	if reuse {
		p.mu.Lock()
		if !p.closed {
			p.idle = append(p.idle, c)
			reuse = false // handed over
		}
		p.mu.Unlock()
		if reuse {
			c.stop(true)
		}
	}
	<-p.slots
}

// Execute runs task's isolated entrypoint for env in a child process and
// returns its JSON result. It relays the child's checkpoints to tc and their
// answers back, and tc's cancellation to the child:
//   - a terminate revoke (cause *stem.RevokedError) is relayed as a cancel:
//     the child's context is cancelled and its next checkpoint returns the
//     revoked error; Execute waits for the child to return, or, once a
//     grace period arrived on kill, for that long from its arrival (a later,
//     shorter one wins), or until tc's deadline (the time limit), and then
//     kills the child and returns an error;
//   - the time limit (stem.ErrTimeLimit) and a lost lease (stem.ErrLeaseLost)
//     kill the child at once, and the error returned wraps the cause;
//   - any other cause (stem.ErrWorkerShutdown) is relayed as a cancel, and
//     the child is killed after ShutdownGrace (or at tc's deadline, if
//     sooner) if it has not returned.
//
// Checkpoints are applied one at a time, in order, beside the watch for
// these events: a slow one delays no kill. However the task ends, Execute
// returns only after a Progress being applied returned (queued
// checkpoints are dropped), so no progress of the task reaches tc after
// its outcome; a Heartbeat or ExtendLease under way is not waited for (it
// records nothing, and one waiting for an unresponsive broker must not
// hold the run).
//
// A child that dies, breaks the protocol, or sends a malformed or
// oversized frame fails the task with an error saying so; a killed or
// broken child is replaced, never reused.
func (p *Pool) Execute(tc *stem.TaskContext, task *stem.Task, env *stemtype.Envelope, killAfter stem.KillSignal) (json.RawMessage, error) {
	if task == nil || !task.IsIsolated() {
		return nil, stem.NoRetry(fmt.Errorf("stem: isolated: task %q has no isolated entrypoint", env.Task))
	}
	c, err := p.acquire(tc)
	if err != nil {
		return nil, err
	}
	res, err, reuse := p.run(c, tc, env, killAfter)
	p.release(c, reuse)
	return res, err
}

// run drives one task on c. reuse reports whether c may run another task.
func (p *Pool) run(c *proc, tc *stem.TaskContext, env *stemtype.Envelope, killAfter stem.KillSignal) (res json.RawMessage, err error, reuse bool) {
	c.runs++
	run := c.runs
	// Built on first use: most runs log nothing, and With is costly.
	var logger *slog.Logger
	log := func() *slog.Logger {
		if logger == nil {
			logger = c.log.With("task_id", env.ID, "task", env.Task)
		}
		return logger
	}
	// fail stops the child (synchronously: the task has not ended until
	// its process has) and describes what happened. graceful gives a child
	// that is exiting anyway the time to report its own exit status.
	fail := func(graceful bool, format string, args ...any) (json.RawMessage, error, bool) {
		c.stop(graceful)
		err := c.describe(fmt.Errorf(format, args...), "")
		log().Warn("isolated task failed: child replaced", "err", err)
		return nil, err, false
	}
	if err := c.send(&message{Type: typeRun, Run: run, Task: env.Task, TaskID: env.ID, Queue: env.Queue,
		Attempt: env.Attempt, Args: json.RawMessage(env.Args)}); err != nil {
		if errors.Is(err, ErrFrameTooLarge) {
			// Nothing was written: the child is as good as before.
			return nil, stem.NoRetry(fmt.Errorf("stem: isolated task %s: arguments too large: %w", env.ID, err)), true
		}
		return fail(false, "stem: isolated task %s: %w", env.ID, err)
	}

	var (
		done   = tc.Done()
		exited = c.exited
		cause  error // tc's cancellation cause, once tc is done

		killAt time.Time // when the child is killed; zero while never
		limit  time.Time // tc's deadline, when a kill was armed for it
		killT  *time.Timer
		killC  <-chan time.Time
		drainC <-chan time.Time // armed once the child exited

		// Checkpoints run one at a time, in order, in a goroutine of their
		// own, so that a slow one (an ExtendLease waiting for the broker,
		// a blocked Progress) delays no kill: ckBusy says one is under
		// way, ckQueue holds the next ones. The goroutine delivers its
		// answer on ckDone, which has room for it, so it ends even once
		// the run is over; only this loop writes to the child, and only
		// about this run.
		ckQueue []*message
		ckBusy  bool
		ckType  string // the type of the checkpoint under way
		ckDone  = make(chan ckAnswer, 1)
	)
	armKill := func(at time.Time) {
		if !killAt.IsZero() && !at.Before(killAt) {
			return // a later, longer grace period never extends an earlier one
		}
		killAt = at
		if killT == nil {
			killT = time.NewTimer(time.Until(at))
			killC = killT.C
		} else {
			killT.Reset(time.Until(at))
		}
	}
	// armLimit keeps tc's time limit once tc was cancelled for another
	// reason: the task's deadline stays a kill however it was cancelled.
	armLimit := func() {
		if dl, ok := tc.Deadline(); ok {
			limit = dl
			armKill(dl)
		}
	}
	defer func() {
		if killT != nil {
			killT.Stop()
		}
	}()
	// However the run ends (the child died, broke the protocol or was
	// killed), a progress checkpoint still being applied to tc finishes
	// first: a progress write that reached the worker after it recorded
	// the outcome would follow (and could replace) it. A heartbeat or a
	// lease extension under way is not waited for: it records nothing,
	// and one waiting for an unresponsive broker must not hold the run.
	// Queued checkpoints not yet started are dropped.
	defer func() {
		if ckBusy && ckType == typeProgress {
			if p.hooks.ckWait != nil {
				p.hooks.ckWait()
			}
			<-ckDone
		}
	}()
	startCheckpoint := func(m *message) {
		ckBusy, ckType = true, m.Type
		// Close waits for the goroutine, as for every goroutine of the pool.
		p.mu.Lock()
		closed := p.closed
		if !closed {
			p.wg.Add(1)
		}
		p.mu.Unlock()
		if closed {
			ckDone <- ckAnswer{m: m, err: ErrPoolClosed}
			return
		}
		go func() {
			defer p.wg.Done()
			ckDone <- ckAnswer{m: m, err: checkpoint(tc, m)}
		}()
	}
	reply := func(m *message, cerr error) error {
		return c.send(&message{Type: typeReply, Run: m.Run, Seq: m.Seq, Error: encodeCause(cerr)})
	}
	// settle runs the checkpoints still pending once the task returned,
	// in order, and answers them: they take effect before the outcome, and
	// the child, reused, has no request left unanswered. It reports
	// whether the child took the answers.
	settle := func() bool {
		if ckBusy {
			a := <-ckDone
			ckBusy = false
			if reply(a.m, a.err) != nil {
				return false
			}
		}
		for _, m := range ckQueue {
			if reply(m, checkpoint(tc, m)) != nil {
				return false
			}
		}
		ckQueue = nil
		return true
	}
	// outcome returns the task's outcome, reusing the child unless it
	// does not take the answers to its last checkpoints.
	outcome := func(res json.RawMessage, err error) (bool, json.RawMessage, error, bool) {
		if !settle() {
			c.stop(false)
			log().Warn("isolated child does not read its stdin: replaced")
			return true, res, err, false
		}
		return true, res, err, true
	}
	// handle deals with one inbound of the child; end reports that the
	// run is over, with its outcome.
	handle := func(in inbound) (end bool, res json.RawMessage, err error, reuse bool) {
		if in.err != nil {
			switch {
			case eof(in.err) && cause != nil:
				res, err, reuse = fail(true, "stem: isolated task %s: child %d exited after its task was cancelled: %w", env.ID, c.pid, cause)
			case eof(in.err):
				res, err, reuse = fail(true, "stem: isolated task %s: child %d exited mid-task", env.ID, c.pid)
			default:
				res, err, reuse = fail(false, "stem: isolated task %s: child %d: %w", env.ID, c.pid, in.err)
			}
			return true, res, err, reuse
		}
		m := in.m
		switch m.Type {
		case typeHeartbeat, typeExtendLease, typeProgress:
			switch {
			case m.Run > run:
				res, err, reuse = fail(false, "stem: isolated task %s: child %d: %w: %s for run %d during run %d",
					env.ID, c.pid, ErrFrameMalformed, m.Type, m.Run, run)
				return true, res, err, reuse
			case m.Run < run:
				// A goroutine a previous task left behind.
				if rerr := reply(m, errReturned); rerr != nil {
					res, err, reuse = fail(false, "stem: isolated task %s: %w", env.ID, rerr)
					return true, res, err, reuse
				}
			case ckBusy:
				ckQueue = append(ckQueue, m)
			default:
				startCheckpoint(m)
			}
			return false, nil, nil, false
		case typeResult, typeError:
			if m.Run != run {
				res, err, reuse = fail(false, "stem: isolated task %s: child %d: %w: %s for run %d during run %d",
					env.ID, c.pid, ErrFrameMalformed, m.Type, m.Run, run)
				return true, res, err, reuse
			}
			if m.Type == typeResult {
				if len(m.Result) == 0 {
					return outcome(json.RawMessage("null"), nil)
				}
				return outcome(m.Result, nil)
			}
			if m.Error.Code == codePanic {
				// The child exits after a panic: its memory may be in
				// any state.
				log().Error("isolated task panicked: replacing its child", "panic", m.Error.Message, "stack", m.Error.Stack)
				c.stop(true)
				return true, nil, taskError(m.Error), false
			}
			return outcome(nil, taskError(m.Error))
		}
		res, err, reuse = fail(false, "stem: isolated task %s: child %d: %w: %s during a run", env.ID, c.pid, ErrFrameMalformed, m.Type)
		return true, res, err, reuse
	}
	// peek handles what the child sent already, before a kill: a result
	// that arrived at the same instant as the kill wins.
	peek := func() (end bool, res json.RawMessage, err error, reuse bool) {
		for range len(c.msgs) {
			if end, res, err, reuse = handle(<-c.msgs); end {
				return end, res, err, reuse
			}
		}
		return false, nil, nil, false
	}

	for {
		select {
		case in := <-c.msgs:
			if end, res, err, reuse := handle(in); end {
				return res, err, reuse
			}

		case a := <-ckDone:
			ckBusy = false
			if err := reply(a.m, a.err); err != nil {
				return fail(false, "stem: isolated task %s: %w", env.ID, err)
			}
			if len(ckQueue) > 0 {
				m := ckQueue[0]
				ckQueue = ckQueue[1:]
				startCheckpoint(m)
			}

		case <-done:
			done = nil
			cause = context.Cause(tc)
			var rev *stem.RevokedError
			switch {
			case errors.Is(cause, stem.ErrTimeLimit), errors.Is(cause, stem.ErrLeaseLost):
				if end, res, err, reuse := peek(); end {
					return res, err, reuse
				}
				c.stop(false)
				log().Info("isolated task's child killed", "cause", cause)
				return nil, fmt.Errorf("stem: isolated task %s: child %d killed: %w", env.ID, c.pid, cause), false
			case errors.As(cause, &rev):
				// Cooperative: the child stops at its next checkpoint,
				// unless a kill-after grace period or the time limit ends
				// it first.
				armLimit()
			default:
				armKill(time.Now().Add(p.cfg.ShutdownGrace))
				armLimit()
			}
			if err := c.send(&message{Type: typeCancel, Run: run, Cause: encodeCause(cause)}); err != nil {
				return fail(false, "stem: isolated task %s: %w", env.ID, err)
			}

		case d := <-killAfter:
			log().Info("isolated task will be killed unless it returns first", "kill_after", d)
			armKill(time.Now().Add(d))

		case <-killC:
			if end, res, err, reuse := peek(); end {
				return res, err, reuse
			}
			c.stop(false)
			if !limit.IsZero() && !killAt.Before(limit) {
				log().Info("isolated task's child killed at its time limit", "cause", cause)
				return nil, fmt.Errorf("stem: isolated task %s: child %d killed: %w (cancelled before: %w)",
					env.ID, c.pid, stem.ErrTimeLimit, cause), false
			}
			why := cause
			if why == nil {
				why = errors.New("stem: isolated: kill-after grace period over")
			}
			log().Info("isolated task's child killed after its grace period", "cause", why)
			return nil, fmt.Errorf("stem: isolated task %s: child %d killed after its grace period: %w", env.ID, c.pid, why), false

		case <-exited:
			// The child is gone, but what it wrote last may still be in
			// the pipe: read on until its end, which comes at once unless
			// a process the task started holds the pipe open.
			exited = nil
			t := time.NewTimer(drainWait)
			defer t.Stop()
			drainC = t.C

		case <-drainC:
			return fail(false, "stem: isolated task %s: child %d exited mid-task", env.ID, c.pid)
		}
	}
}

// ckAnswer is the worker's answer to one of a child's checkpoints.
type ckAnswer struct {
	m   *message
	err error
}

// maxExtendLease caps what a child's extendLease asks for: a child cannot
// make the worker keep its task leased for longer in one request.
const maxExtendLease = 24 * time.Hour

// checkpoint relays a child's checkpoint to the worker's task context and
// returns its answer.
func checkpoint(tc *stem.TaskContext, m *message) error {
	switch m.Type {
	case typeHeartbeat:
		return tc.Heartbeat()
	case typeExtendLease:
		return tc.ExtendLease(time.Duration(min(m.Ms, maxExtendLease.Milliseconds())) * time.Millisecond)
	default:
		var data any
		if len(m.Data) > 0 {
			data = m.Data
		}
		return tc.Progress(*m.Percent, data)
	}
}
