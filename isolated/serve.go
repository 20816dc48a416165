package isolated

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/jsonvalue"
)

// Exit codes of a child process.
const (
	exitOK       = 0 // the worker closed the child's stdin
	exitPanic    = 2 // a task panicked (as an unrecovered Go panic would)
	exitProtocol = 3 // the worker broke the protocol, or the child could not serve
)

// IsChild reports whether this process was started by a Pool as an
// isolated child, that is whether ServeIfChild would serve the child role.
func IsChild() bool { return os.Getenv(EnvChild) != "" }

// ServeIfChild serves the child role and exits the process when the process
// was started by a Pool; anywhere else it returns at once. Call it first
// thing in main, after building the registry the same way as the worker
// does (stemcli.Main calls it for programs that use stemcli):
//
//	func main() {
//		reg := stem.NewRegistry()
//		registerTasks(reg)
//		isolated.ServeIfChild(reg) // returns only in the worker
//		...
//	}
//
// In the child it runs the isolated entrypoints of reg that the worker asks
// for, one at a time, until the worker closes the pipe. Being the child's
// whole life, it changes process-wide state that only the child role
// needs: it unsets EnvChild and its companions, moves the protocol off
// descriptors 0 and 1 (which then read the null device and write to
// stderr, so task code cannot corrupt the protocol), and makes
// slog.Default write JSON records to stderr, which the worker relays to
// its own log at their levels.
func ServeIfChild(reg *stem.Registry) {
	offered := os.Getenv(EnvChild)
	if offered == "" {
		return
	}
	os.Exit(serveChild(reg, offered))
}

// childServer is the child's side of the protocol.
type childServer struct {
	reg *stem.Registry
	in  *bufio.Reader
	out *os.File
	max int
	log *slog.Logger

	wmu sync.Mutex // serialises frames on out

	mu      sync.Mutex
	cur     *childRun
	waiters map[uint64]chan *message // checkpoint requests by seq
	seq     atomic.Uint64
	gone    chan struct{} // closed when the worker's stream ends
}

// childRun is the task the child is running.
type childRun struct {
	id       uint64
	cancel   context.CancelCauseFunc
	finished atomic.Bool
}

func serveChild(reg *stem.Registry, offered string) int {
	maxFrame := DefaultMaxFrame
	if v, err := strconv.Atoi(os.Getenv(EnvMaxFrame)); err == nil && v > 0 {
		maxFrame = min(v, maxFrameLimit)
	}
	level := slog.LevelInfo
	if v := os.Getenv(EnvLogLevel); v != "" {
		_ = level.UnmarshalText([]byte(v))
	}
	for _, k := range []string{EnvChild, EnvMaxFrame, EnvLogLevel} {
		os.Unsetenv(k)
	}
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(logger)

	v, err := strconv.Atoi(offered)
	if err != nil || v < ProtocolVersion {
		logger.Error("stem: isolated: the worker offers an unsupported protocol version",
			"offered", offered, "supported", ProtocolVersion)
		return exitProtocol
	}
	if reg == nil {
		logger.Error("stem: isolated: ServeIfChild was called with a nil registry")
		return exitProtocol
	}
	in, out, err := protocolFiles()
	if err != nil {
		logger.Error("stem: isolated: cannot set up the protocol streams", "err", err)
		return exitProtocol
	}
	s := &childServer{reg: reg, in: bufio.NewReaderSize(in, 64<<10), out: out, max: maxFrame, log: logger,
		waiters: make(map[uint64]chan *message), gone: make(chan struct{})}
	return s.serve()
}

// TaskNames returns the names of reg's tasks that have an isolated
// entrypoint, sorted: a worker needs a Pool when it is not empty.
func TaskNames(reg *stem.Registry) []string { return isolatedNames(reg) }

// isolatedNames returns the names of reg's tasks that have an isolated
// entrypoint.
func isolatedNames(reg *stem.Registry) []string {
	var names []string
	for _, n := range reg.Names() {
		if t, ok := reg.Lookup(n); ok && t.IsIsolated() {
			names = append(names, n)
		}
	}
	return names
}

func (s *childServer) serve() int {
	defer close(s.gone)
	hello := &message{Type: typeHello, Protocol: ProtocolVersion, PID: os.Getpid(), Tasks: isolatedNames(s.reg)}
	if err := s.send(hello); err != nil {
		s.log.Error("stem: isolated: send hello", "err", err)
		return exitProtocol
	}
	for {
		payload, err := readFrame(s.in, s.max)
		if errors.Is(err, io.EOF) {
			// The worker closed the pipe: it retires this child, or it is
			// gone and nobody could receive a result. Processes the tasks
			// started go too: a worker that is there kills them anyway
			// once this child exited, but one killed with SIGKILL cannot.
			endOwnGroup()
			return exitOK
		}
		if err != nil {
			s.log.Error("stem: isolated: bad frame from the worker", "err", err)
			return exitProtocol
		}
		m, err := decodeMessage(payload, typeRun, typeCancel, typeReply)
		if err != nil {
			s.log.Error("stem: isolated: bad message from the worker", "err", err)
			return exitProtocol
		}
		switch m.Type {
		case typeRun:
			ctx, cancel := context.WithCancelCause(context.Background())
			r := &childRun{id: m.Run, cancel: cancel}
			s.mu.Lock()
			busy := s.cur != nil && !s.cur.finished.Load()
			if !busy {
				s.cur = r
			}
			s.mu.Unlock()
			if busy {
				cancel(nil)
				s.log.Error("stem: isolated: run requested while a task is running", "run", m.Run)
				return exitProtocol
			}
			go s.run(ctx, r, m)
		case typeCancel:
			s.mu.Lock()
			r := s.cur
			s.mu.Unlock()
			// A cancel for a run that already ended crossed its result on
			// the pipe: nothing to do.
			if r != nil && r.id == m.Run {
				r.cancel(decodeCause(m.Cause))
			}
		case typeReply:
			s.mu.Lock()
			ch, ok := s.waiters[m.Seq]
			delete(s.waiters, m.Seq)
			s.mu.Unlock()
			if ok {
				ch <- m
			}
		}
	}
}

// send writes one message, whole, to the worker.
func (s *childServer) send(m *message) error {
	b, err := encodeMessage(m)
	if err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return writeFrame(s.out, b, s.max)
}

// run runs one task and reports its outcome. After a panic it exits the
// process: the child's memory may be in any state, so the worker replaces
// it.
func (s *childServer) run(ctx context.Context, r *childRun, m *message) {
	defer r.cancel(nil)
	out, panicked := s.invoke(ctx, r, m)
	r.finished.Store(true)
	err := s.send(out)
	if errors.Is(err, ErrFrameTooLarge) && out.Type == typeResult {
		// A result the worker would refuse fails the task with a clear
		// error instead of breaking the protocol.
		err = s.send(&message{Type: typeError, Run: r.id, Error: &wireError{Code: codeHandler, NoRetry: true,
			Message: fmt.Sprintf("stem: isolated: task result of %d bytes exceeds the %d-byte frame limit", len(out.Result), s.max)}})
	}
	if err != nil {
		s.log.Error("stem: isolated: send outcome", "err", err, "task_id", m.TaskID)
		os.Exit(exitProtocol)
	}
	if panicked {
		os.Exit(exitPanic)
	}
}

// invoke runs the entrypoint and returns the result or error message.
func (s *childServer) invoke(ctx context.Context, r *childRun, m *message) (out *message, panicked bool) {
	task, ok := s.reg.Lookup(m.Task)
	if !ok || !task.IsIsolated() {
		return &message{Type: typeError, Run: r.id, Error: &wireError{Code: codeUnknownTask, NoRetry: true,
			Message: fmt.Sprintf("stem: isolated: the child process has no isolated entrypoint for task %q: "+
				"build the registry the same way in the worker and in the child", m.Task)}}, false
	}
	tc := stem.NewTaskContext(ctx, stem.TaskInfo{ID: m.TaskID, Task: m.Task, Queue: m.Queue, Attempt: m.Attempt},
		childSignals{s: s, r: r}, s.log)
	defer func() {
		if v := recover(); v != nil {
			out = &message{Type: typeError, Run: r.id, Error: &wireError{Code: codePanic,
				Message: fmt.Sprint(v), Stack: string(debug.Stack())}}
			panicked = true
		}
	}()
	v, err := task.Isolated(tc, stem.Args(m.Args))
	if err != nil {
		return &message{Type: typeError, Run: r.id, Error: encodeTaskError(err)}, false
	}
	raw, err := jsonvalue.Encode[stem.Args](v)
	if err != nil {
		return &message{Type: typeError, Run: r.id, Error: &wireError{Code: codeHandler,
			Message: "stem: encode task result: " + err.Error()}}, false
	}
	return &message{Type: typeResult, Run: r.id, Result: raw}, false
}

// childSignals carries the child's checkpoints to the worker and returns
// the worker's answer: nil, or the cause of the task's cancellation there.
type childSignals struct {
	s *childServer
	r *childRun
}

// errWorkerGone is returned by checkpoints once the worker's stream ended.
var errWorkerGone = errors.New("stem: isolated: the worker closed the pipe")

func (c childSignals) Heartbeat() error { return c.call(&message{Type: typeHeartbeat}) }

func (c childSignals) ExtendLease(d time.Duration) error {
	return c.call(&message{Type: typeExtendLease, Ms: max(1, d.Milliseconds())})
}

func (c childSignals) Progress(percent float64, data json.RawMessage) error {
	return c.call(&message{Type: typeProgress, Percent: &percent, Data: data})
}

func (c childSignals) call(m *message) error {
	if c.r.finished.Load() {
		return errors.New("stem: isolated: checkpoint after the task returned")
	}
	s := c.s
	m.Run, m.Seq = c.r.id, s.seq.Add(1)
	ch := make(chan *message, 1)
	s.mu.Lock()
	s.waiters[m.Seq] = ch
	s.mu.Unlock()
	if err := s.send(m); err != nil {
		s.mu.Lock()
		delete(s.waiters, m.Seq)
		s.mu.Unlock()
		return err
	}
	select {
	case reply := <-ch:
		return decodeCause(reply.Error)
	case <-s.gone:
		return errWorkerGone
	}
}
