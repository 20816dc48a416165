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
	o := p.run(c, tc, env, killAfter)
	p.release(c, o.reuse)
	return o.res, o.err
}

// run drives one task on c and returns its outcome; see Execute.
func (p *Pool) run(c *proc, tc *stem.TaskContext, env *stemtype.Envelope, killAfter stem.KillSignal) outcome {
	c.runs++
	r := &taskRun{p: p, c: c, tc: tc, env: env, n: c.runs}
	if o, sent := r.start(); !sent {
		return o
	}
	defer r.cleanup()
	return r.loop(killAfter)
}
