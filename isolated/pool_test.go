package isolated_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/isolated"
	"github.com/stem-go/stem/stemtype"
)

// waitTimeout bounds every wait of these tests: a deadline against a hang,
// never a measurement.
const waitTimeout = 20 * time.Second

// newPool returns a pool over the test binary, closed when t ends.
func newPool(t testing.TB, cfg isolated.PoolConfig) *isolated.Pool {
	t.Helper()
	if cfg.Registry == nil {
		cfg.Registry = testRegistry()
	}
	if cfg.Logger == nil {
		cfg.Logger, _ = testLogger(t)
	}
	p, err := isolated.NewPool(cfg)
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	t.Cleanup(func() {
		p.Close()
		if s := p.Stats(); s.Live != 0 || s.Busy != 0 {
			t.Errorf("after Close: %+v, want no live or busy child", s)
		}
	})
	return p
}

// recorder is a stem.TaskSignals recording the checkpoints that reach the
// worker's side, and announcing each on events.
type recorder struct {
	mu         sync.Mutex
	heartbeats int
	leases     []time.Duration
	progress   []stemtype.Progress
	events     chan string
}

func newRecorder() *recorder { return &recorder{events: make(chan string, 1024)} }

func (r *recorder) note(ev string) {
	select {
	case r.events <- ev:
	default:
	}
}

func (r *recorder) Heartbeat() error {
	r.mu.Lock()
	r.heartbeats++
	r.mu.Unlock()
	r.note("heartbeat")
	return nil
}

func (r *recorder) ExtendLease(d time.Duration) error {
	r.mu.Lock()
	r.leases = append(r.leases, d)
	r.mu.Unlock()
	r.note("extendLease")
	return nil
}

func (r *recorder) Progress(pct float64, data json.RawMessage) error {
	r.mu.Lock()
	r.progress = append(r.progress, stemtype.Progress{Percent: pct, Data: data})
	r.mu.Unlock()
	r.note("progress")
	return nil
}

// await waits for the recorder's next event.
func (r *recorder) await(t testing.TB) string {
	t.Helper()
	select {
	case ev := <-r.events:
		return ev
	case <-time.After(waitTimeout):
		t.Fatalf("no checkpoint reached the worker within %s", waitTimeout)
		return ""
	}
}

// call is one Execute running in the background.
type call struct {
	sig    *recorder
	cancel context.CancelCauseFunc
	kill   chan time.Duration
	done   chan struct{}
	res    json.RawMessage
	err    error
}

// start runs task on p in the background with a task context of its own.
func start(t testing.TB, p *isolated.Pool, ctx context.Context, name string, args string) *call {
	t.Helper()
	task, ok := testRegistry().Lookup(name)
	if !ok {
		t.Fatalf("no test task %q", name)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	c := &call{sig: newRecorder(), cancel: cancel, kill: make(chan time.Duration, 4), done: make(chan struct{})}
	id := stem.NewTaskID()
	// The worker's task logger: the pool logs with its own.
	tc := stem.NewTaskContext(ctx, stem.TaskInfo{ID: id, Task: name, Queue: "default"}, c.sig, quietLogger())
	env := &stemtype.Envelope{ID: id, Task: name, Queue: "default", Args: json.RawMessage(args)}
	go func() {
		defer close(c.done)
		defer cancel(nil)
		c.res, c.err = p.Execute(tc, task, env, c.kill)
	}()
	return c
}

// wait waits for the call to return.
func (c *call) wait(t testing.TB) (json.RawMessage, error) {
	t.Helper()
	select {
	case <-c.done:
		return c.res, c.err
	case <-time.After(waitTimeout):
		t.Fatalf("Execute did not return within %s", waitTimeout)
		return nil, nil
	}
}

// execute runs task on p and returns its outcome.
func execute(t testing.TB, p *isolated.Pool, name, args string) (json.RawMessage, error) {
	t.Helper()
	return start(t, p, context.Background(), name, args).wait(t)
}

// childPID runs test.pid on p and returns the pid of the child that ran it.
func childPID(t testing.TB, p *isolated.Pool) int {
	t.Helper()
	res, err := execute(t, p, "test.pid", "")
	if err != nil {
		t.Fatalf("test.pid: %v", err)
	}
	var r pidResult
	if err := json.Unmarshal(res, &r); err != nil || r.PID == 0 {
		t.Fatalf("test.pid result %s: %v", res, err)
	}
	return r.PID
}

func TestExecuteReturnsResultAndReusesChild(t *testing.T) {
	t.Parallel()
	p := newPool(t, isolated.PoolConfig{Size: 1})
	res, err := execute(t, p, "test.echo", `{"a":[1,2,"three"]}`)
	if err != nil {
		t.Fatalf("test.echo: %v", err)
	}
	var got struct {
		Args   json.RawMessage `json:"args"`
		PID    int             `json:"pid"`
		TaskID string          `json:"task_id"`
	}
	if err := json.Unmarshal(res, &got); err != nil {
		t.Fatalf("result %s: %v", res, err)
	}
	if string(got.Args) != `{"a":[1,2,"three"]}` || got.TaskID == "" {
		t.Errorf("result = %s, want the args back and the task id", res)
	}
	if got.PID == os.Getpid() || got.PID == 0 {
		t.Errorf("task ran in pid %d, the test's own pid is %d: want a child", got.PID, os.Getpid())
	}
	for i := range 3 {
		if pid := childPID(t, p); pid != got.PID {
			t.Errorf("task %d ran in pid %d, want the reused child %d", i, pid, got.PID)
		}
	}
	if res, err := execute(t, p, "test.noop", ""); err != nil || string(res) != "null" {
		t.Errorf("test.noop = %s, %v; want null, nil", res, err)
	}
	if s := p.Stats(); s.Started != 1 || s.Live != 1 || s.Busy != 0 || s.Size != 1 {
		t.Errorf("stats = %+v, want one child started, alive and idle", s)
	}
}

func TestCheckpointsReachTheWorker(t *testing.T) {
	t.Parallel()
	p := newPool(t, isolated.PoolConfig{Size: 1})
	c := start(t, p, context.Background(), "test.signals", "")
	res, err := c.wait(t)
	if err != nil {
		t.Fatalf("test.signals: %v", err)
	}
	var got signalsResult
	if err := json.Unmarshal(res, &got); err != nil || got != (signalsResult{}) {
		t.Errorf("checkpoints in the child returned %s (%v), want nil errors", res, err)
	}
	c.sig.mu.Lock()
	defer c.sig.mu.Unlock()
	if c.sig.heartbeats != 1 {
		t.Errorf("worker saw %d heartbeats, want 1", c.sig.heartbeats)
	}
	if len(c.sig.leases) != 1 || c.sig.leases[0] != 5*time.Second {
		t.Errorf("worker saw lease extensions %v, want [5s]", c.sig.leases)
	}
	if len(c.sig.progress) != 1 || c.sig.progress[0].Percent != 50 || string(c.sig.progress[0].Data) != `{"k":"v"}` {
		t.Errorf("worker saw progress %+v, want 50%% with {\"k\":\"v\"}", c.sig.progress)
	}
}

func TestTaskErrorsCrossThePipe(t *testing.T) {
	t.Parallel()
	p := newPool(t, isolated.PoolConfig{Size: 1})
	pid := childPID(t, p)
	if _, err := execute(t, p, "test.fail", ""); err == nil || err.Error() != "test.fail: attempt 0 failed" {
		t.Errorf("test.fail error = %v, want the task's own message", err)
	}
	if _, err := execute(t, p, "test.noretry", ""); err == nil || !strings.Contains(err.Error(), "test.noretry: hopeless") {
		t.Errorf("test.noretry error = %v, want the task's own message", err)
	}
	if got := childPID(t, p); got != pid {
		t.Errorf("a task returning an error replaced the child (%d, then %d)", pid, got)
	}
}

func TestUnknownEntrypointInChild(t *testing.T) {
	t.Parallel()
	p := newPool(t, isolated.PoolConfig{Size: 1})
	tc := stem.NewTaskContext(context.Background(), stem.TaskInfo{ID: "x", Task: "not.in.child"}, nil, nil)
	task := &stem.Task{Name: "not.in.child", Isolated: func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }}
	_, err := p.Execute(tc, task, &stemtype.Envelope{ID: "x", Task: "not.in.child"}, nil)
	if err == nil || !strings.Contains(err.Error(), `no isolated entrypoint for task "not.in.child"`) {
		t.Errorf("error = %v, want a clear unknown entrypoint error", err)
	}
	_, err = p.Execute(tc, &stem.Task{Name: "inline", Run: task.Isolated}, &stemtype.Envelope{ID: "x", Task: "inline"}, nil)
	if err == nil || !strings.Contains(err.Error(), "no isolated entrypoint") {
		t.Errorf("Execute of an inline task: %v, want an error", err)
	}
}

// TestRevokeReachesChild cancels the worker's task context with a revoke:
// the child's next checkpoint returns the revoked error, with the revoke's
// details, and the child, which returned on its own, is reused.
func TestRevokeReachesChild(t *testing.T) {
	t.Parallel()
	p := newPool(t, isolated.PoolConfig{Size: 1})
	pid := childPID(t, p)
	rev := &stem.RevokedError{TaskID: "t1", Reason: "not needed", RequestedBy: "tester", IssuedAt: time.Now().UTC()}

	c := start(t, p, context.Background(), "test.heartbeat-until-revoked", "")
	c.sig.await(t)
	c.cancel(rev)
	_, err := c.wait(t)
	var got *stem.RevokedError
	if !errors.Is(err, stem.ErrTaskRevoked) || !errors.As(err, &got) {
		t.Fatalf("error = %v, want one matching stem.ErrTaskRevoked", err)
	}
	if got.Reason != rev.Reason || got.RequestedBy != rev.RequestedBy || !got.IssuedAt.Equal(rev.IssuedAt) {
		t.Errorf("revoke seen in the child = %+v, want %+v", got, rev)
	}

	// A task that does not call a checkpoint sees its context cancelled.
	c = start(t, p, context.Background(), "test.wait-ctx-err", "")
	c.sig.await(t)
	c.cancel(rev)
	if _, err := c.wait(t); !errors.Is(err, stem.ErrTaskRevoked) {
		t.Errorf("error = %v, want the cause of the child's context to match stem.ErrTaskRevoked", err)
	}
	if got := childPID(t, p); got != pid {
		t.Errorf("child replaced (%d, then %d) although its tasks returned on their own", pid, got)
	}
}

// TestKillAfter runs a task that ignores its context and every checkpoint:
// a terminate alone leaves it running, and a kill-after grace period kills
// its child, which is replaced. A later, shorter grace period wins.
func TestKillAfter(t *testing.T) {
	t.Parallel()
	p := newPool(t, isolated.PoolConfig{Size: 1})
	pid := childPID(t, p)
	c := start(t, p, context.Background(), "test.spin", "")
	c.sig.await(t)
	c.cancel(&stem.RevokedError{TaskID: "spin", Reason: "runaway"})
	c.kill <- time.Hour
	c.kill <- 10 * time.Millisecond
	_, err := c.wait(t)
	if !errors.Is(err, stem.ErrTaskRevoked) || !strings.Contains(err.Error(), "killed") {
		t.Errorf("error = %v, want a kill wrapping the revoke", err)
	}
	if got := childPID(t, p); got == pid {
		t.Errorf("next task ran in the killed child %d", pid)
	}
	if s := p.Stats(); s.Started != 2 || s.Live != 1 {
		t.Errorf("stats = %+v, want a second child started and one alive", s)
	}
}

func TestTimeLimitAndLostLeaseKill(t *testing.T) {
	t.Parallel()
	for _, cause := range []error{stem.ErrTimeLimit, stem.ErrLeaseLost} {
		t.Run(cause.Error(), func(t *testing.T) {
			t.Parallel()
			p := newPool(t, isolated.PoolConfig{Size: 1})
			pid := childPID(t, p)
			c := start(t, p, context.Background(), "test.spin", "")
			c.sig.await(t)
			c.cancel(cause)
			if _, err := c.wait(t); !errors.Is(err, cause) || !strings.Contains(err.Error(), "killed") {
				t.Errorf("error = %v, want a kill wrapping %v", err, cause)
			}
			if got := childPID(t, p); got == pid {
				t.Errorf("next task ran in the killed child %d", pid)
			}
		})
	}
}

// TestShutdownCancel relays a worker shutdown: a task that returns on its
// own keeps its child; one that ignores it is killed after ShutdownGrace.
func TestShutdownCancel(t *testing.T) {
	t.Parallel()
	p := newPool(t, isolated.PoolConfig{Size: 1, ShutdownGrace: 50 * time.Millisecond})
	pid := childPID(t, p)
	c := start(t, p, context.Background(), "test.wait-ctx-err", "")
	c.sig.await(t)
	c.cancel(stem.ErrWorkerShutdown)
	if _, err := c.wait(t); !errors.Is(err, stem.ErrWorkerShutdown) {
		t.Errorf("error = %v, want the child's cause to match stem.ErrWorkerShutdown", err)
	}
	if got := childPID(t, p); got != pid {
		t.Errorf("child replaced (%d, then %d) although its task returned", pid, got)
	}
	c = start(t, p, context.Background(), "test.spin", "")
	c.sig.await(t)
	c.cancel(stem.ErrWorkerShutdown)
	if _, err := c.wait(t); !errors.Is(err, stem.ErrWorkerShutdown) || !strings.Contains(err.Error(), "killed") {
		t.Errorf("error = %v, want a kill wrapping stem.ErrWorkerShutdown", err)
	}
	if got := childPID(t, p); got == pid {
		t.Errorf("next task ran in the killed child %d", pid)
	}
}

// TestCrashesFailTheTaskOnly: a child that panics, exits, or dies of a
// panic in another goroutine fails its task with a clear error, and the
// next task runs in a fresh child.
func TestCrashesFailTheTaskOnly(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		task string
		want []string
	}{
		{"test.panic", []string{"task panicked: in isolated child: test.panic: boom"}},
		{"test.exit", []string{"exited mid-task", "exit status 3", "test.exit: leaving with status 3"}},
		{"test.goroutine-panic", []string{"exited mid-task", "exit status 2", "test.goroutine-panic: unrecoverable"}},
	} {
		t.Run(tc.task, func(t *testing.T) {
			t.Parallel()
			p := newPool(t, isolated.PoolConfig{Size: 1})
			pid := childPID(t, p)
			_, err := execute(t, p, tc.task, "")
			if err == nil {
				t.Fatalf("%s succeeded", tc.task)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error = %v, want it to mention %q", err, w)
				}
			}
			if got := childPID(t, p); got == pid {
				t.Errorf("next task ran in the crashed child %d", pid)
			}
			if s := p.Stats(); s.Live != 1 || s.Started != 2 {
				t.Errorf("stats = %+v, want one live child, two started", s)
			}
		})
	}
}

// TestStdioCannotCorruptProtocol: task code printing to stdout or reading
// stdin in the child touches neither protocol stream; what it prints and
// logs reaches the worker's log.
func TestStdioCannotCorruptProtocol(t *testing.T) {
	t.Parallel()
	logger, log := testLogger(t)
	p := newPool(t, isolated.PoolConfig{Size: 1, Logger: logger})
	res, err := execute(t, p, "test.stdio", "")
	if err != nil {
		t.Fatalf("test.stdio: %v", err)
	}
	if string(res) != `{"stdinBytes":0,"stdinEOF":true}` {
		t.Errorf("result = %s, want stdin at end of file", res)
	}
	p.Close() // the stderr relay has drained once the children are gone
	out := log.String()
	if !strings.Contains(out, `line="test.stdio: printed on stdout"`) {
		t.Errorf("worker log lacks the child's stdout line:\n%s", out)
	}
	if !strings.Contains(out, `level=WARN msg="test.stdio: logged"`) || !strings.Contains(out, "answer=42") {
		t.Errorf("worker log lacks the child's warning with its attributes:\n%s", out)
	}
}

// TestPoolBoundsChildren: with Size 2, a third task waits for a child to
// be free, and never makes a third child.
func TestPoolBoundsChildren(t *testing.T) {
	t.Parallel()
	p := newPool(t, isolated.PoolConfig{Size: 2})
	a := start(t, p, context.Background(), "test.wait-ctx", "")
	b := start(t, p, context.Background(), "test.wait-ctx", "")
	a.sig.await(t)
	b.sig.await(t)
	c := start(t, p, context.Background(), "test.wait-ctx", "")
	if s := p.Stats(); s.Live != 2 || s.Busy != 2 {
		t.Errorf("stats with two tasks running = %+v, want two live, busy children", s)
	}
	a.cancel(errors.New("done"))
	if _, err := a.wait(t); err != nil {
		t.Errorf("first task: %v", err)
	}
	c.sig.await(t) // the third task got the freed child
	b.cancel(errors.New("done"))
	c.cancel(errors.New("done"))
	for _, x := range []*call{b, c} {
		if _, err := x.wait(t); err != nil {
			t.Errorf("task: %v", err)
		}
	}
	if s := p.Stats(); s.Started != 2 || s.Live != 2 {
		t.Errorf("stats = %+v, want exactly two children ever started", s)
	}
}

func TestMaxTasksPerChild(t *testing.T) {
	t.Parallel()
	p := newPool(t, isolated.PoolConfig{Size: 1, MaxTasksPerChild: 2})
	a, b, c := childPID(t, p), childPID(t, p), childPID(t, p)
	if a != b || c == b {
		t.Errorf("pids %d, %d, %d: want the child retired after two tasks", a, b, c)
	}
}

// TestCloseStopsBusyChildren: Close during a task that ignores everything
// kills its child, and Execute returns an error.
func TestCloseStopsBusyChildren(t *testing.T) {
	t.Parallel()
	p := newPool(t, isolated.PoolConfig{Size: 1, KillGrace: 50 * time.Millisecond})
	c := start(t, p, context.Background(), "test.spin", "")
	c.sig.await(t)
	p.Close()
	if _, err := c.wait(t); err == nil {
		t.Error("Execute succeeded although Close killed its child")
	}
	if _, err := execute(t, p, "test.pid", ""); !errors.Is(err, isolated.ErrPoolClosed) {
		t.Errorf("Execute after Close: %v, want ErrPoolClosed", err)
	}
}

func TestNewPoolChecks(t *testing.T) {
	t.Parallel()
	t.Run("missing entrypoint", func(t *testing.T) {
		t.Parallel()
		reg := testRegistry()
		stem.Register(reg, "only.in.worker", func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }, stem.TaskOptions{Isolated: true})
		logger, _ := testLogger(t)
		_, err := isolated.NewPool(isolated.PoolConfig{Registry: reg, Logger: logger})
		if err == nil || !strings.Contains(err.Error(), "no isolated entrypoint for only.in.worker") {
			t.Errorf("NewPool: %v, want an error naming only.in.worker", err)
		}
	})
	t.Run("not serving the child role", func(t *testing.T) {
		t.Parallel()
		logger, _ := testLogger(t)
		_, err := isolated.NewPool(isolated.PoolConfig{Registry: testRegistry(), Logger: logger,
			Path: "/bin/sh", Args: []string{"-c", "echo usage: myapp COMMAND >&2; exit 64"}})
		for _, w := range []string{"exited before its hello", "exit status 64", "usage: myapp COMMAND", "ServeIfChild"} {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("NewPool: %v, want it to mention %q", err, w)
			}
		}
	})
	t.Run("config", func(t *testing.T) {
		t.Parallel()
		for _, cfg := range []isolated.PoolConfig{{}, {Registry: testRegistry(), Size: -1}, {Registry: testRegistry(), MaxFrame: 2 << 30}} {
			if _, err := isolated.NewPool(cfg); err == nil {
				t.Errorf("NewPool(%+v) succeeded", cfg)
			}
		}
	})
}

// TestRogueChildren runs children that break the protocol in every way we
// could think of: each fails the handshake or the task with a clear error,
// never the worker, and the child is stopped.
func TestRogueChildren(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mode    string
		startup bool // breaks the handshake: NewPool fails
		want    string
		is      error
	}{
		{mode: "exit-before-hello", startup: true, want: "exit status 7"},
		{mode: "no-hello", startup: true, want: "sent no hello within"},
		{mode: "bad-version", startup: true, want: "speaks protocol version 99"},
		{mode: "garbage-hello", startup: true, want: "frame too large", is: isolated.ErrFrameTooLarge},
		{mode: "oversized", want: "2147483647 bytes", is: isolated.ErrFrameTooLarge},
		{mode: "truncated", want: "stream ended inside a 100-byte payload", is: isolated.ErrFrameTruncated},
		{mode: "empty", want: "empty payload", is: isolated.ErrFrameMalformed},
		{mode: "not-json", want: "invalid character", is: isolated.ErrFrameMalformed},
		{mode: "unknown-type", want: `unexpected message type "bogus"`, is: isolated.ErrFrameMalformed},
		{mode: "wrong-run", want: "result for run 8 during run 1", is: isolated.ErrFrameMalformed},
		{mode: "hello-again", want: "hello during a run", is: isolated.ErrFrameMalformed},
		{mode: "silent-exit", want: "exit status 5"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			t.Parallel()
			logger, _ := testLogger(t)
			// Only the child that never says hello needs the start-up
			// bound to fire; the others get a bound a loaded machine
			// cannot reach, so that a slow start is not taken for theirs.
			start := time.Minute
			if tc.mode == "no-hello" {
				start = 2 * time.Second
			}
			cfg := isolated.PoolConfig{Registry: testRegistry(), Size: 1, Logger: logger,
				Env: []string{envRogue + "=" + tc.mode}, StartTimeout: start, KillGrace: 100 * time.Millisecond}
			var err error
			if tc.startup {
				_, err = isolated.NewPool(cfg)
			} else {
				p := newPool(t, cfg)
				_, err = execute(t, p, "test.noop", "")
				if s := p.Stats(); s.Live != 0 {
					t.Errorf("stats = %+v, want the rogue child stopped", s)
				}
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "rogue child: mode "+tc.mode) {
				t.Errorf("error = %v, want it to mention %q and the child's output", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error = %v, want it to match %v", err, tc.is)
			}
		})
	}
}

// TestFramesLargerThanTheLimit: a result or arguments over MaxFrame fail
// the task cleanly (each side checks before sending) and keep the child.
func TestFramesLargerThanTheLimit(t *testing.T) {
	t.Parallel()
	p := newPool(t, isolated.PoolConfig{Size: 1, MaxFrame: 4 << 10})
	pid := childPID(t, p)
	if _, err := execute(t, p, "test.big", ""); err == nil || !strings.Contains(err.Error(), "exceeds the 4096-byte frame limit") {
		t.Errorf("test.big: %v, want a frame limit error", err)
	}
	if _, err := execute(t, p, "test.echo", `"`+strings.Repeat("a", 8<<10)+`"`); !errors.Is(err, isolated.ErrFrameTooLarge) {
		t.Errorf("test.echo with 8 KiB of arguments: %v, want ErrFrameTooLarge", err)
	}
	if got := childPID(t, p); got != pid {
		t.Errorf("child replaced (%d, then %d) for frames that were never sent", pid, got)
	}
}

// TestTaskContextDoneBeforeStart: a task whose context ends while it waits
// for a child never starts.
func TestTaskContextDoneBeforeStart(t *testing.T) {
	t.Parallel()
	p := newPool(t, isolated.PoolConfig{Size: 1})
	busy := start(t, p, context.Background(), "test.wait-ctx", "")
	busy.sig.await(t)
	ctx, cancel := context.WithCancelCause(context.Background())
	waiting := start(t, p, ctx, "test.noop", "")
	cancel(fmt.Errorf("gave up: %w", stem.ErrWorkerShutdown))
	if _, err := waiting.wait(t); !errors.Is(err, stem.ErrWorkerShutdown) || !strings.Contains(err.Error(), "not started") {
		t.Errorf("error = %v, want not started, wrapping the cause", err)
	}
	busy.cancel(nil)
	if _, err := busy.wait(t); err != nil {
		t.Errorf("busy task: %v", err)
	}
}
