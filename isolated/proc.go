package isolated

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"
)

// inbound is one message read from a child, or the error that ended the
// child's stream.
type inbound struct {
	m   *message
	err error
}

// proc is the worker's handle on one child process.
type proc struct {
	pool *Pool
	cmd  *exec.Cmd
	pid  int
	log  *slog.Logger

	in   *os.File // the child's stdin: worker to child
	out  *os.File // the child's stdout: child to worker
	errp *os.File // the child's stderr

	msgs       chan inbound  // from readLoop
	quit       chan struct{} // closed by cleanup: stops readLoop
	readDone   chan struct{}
	stderrDone chan struct{}
	exited     chan struct{} // closed once the process was reaped
	waitErr    error         // set before exited is closed

	// sigMu orders signals to the child's process group before its reap:
	// once the child is reaped its pid, the group's id, may be reused by
	// an unrelated process, so no signal is sent after.
	sigMu  sync.Mutex
	reaped bool

	// runs counts the runs sent to the child; only the goroutine that holds
	// the child (Execute or the pool) touches it.
	runs uint64

	tailMu sync.Mutex
	tail   []string // the last lines of stderr, for failure messages
	crash  string   // the last line of stderr that starts a Go crash report

	stopOnce sync.Once
	inOnce   sync.Once
}

// sig is a signal the pool sends to a child's process group.
type sig int

const (
	sigTerm sig = iota // SIGTERM: asks the group to exit
	sigKill            // SIGKILL
)

// tailLines is how many of a child's last stderr lines a failure message
// quotes.
const tailLines = 5

// startProc starts a child and waits for its hello, until the pool's
// StartTimeout or ctx ends.
func (p *Pool) startProc(ctx context.Context) (*proc, *message, error) {
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	pipe := func() (r, w *os.File, err error) {
		r, w, err = os.Pipe()
		if err == nil {
			files = append(files, r, w)
		}
		return r, w, err
	}
	inR, inW, err := pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("stem: isolated: pipe: %w", err)
	}
	outR, outW, err := pipe()
	if err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("stem: isolated: pipe: %w", err)
	}
	errR, errW, err := pipe()
	if err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("stem: isolated: pipe: %w", err)
	}
	cmd := exec.Command(p.path, p.cfg.Args...)
	cmd.Env = p.env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	setProcAttr(cmd)
	// The child's goroutines join the pool's wait group, and the child the
	// live set, under the lock that Close takes to mark the pool closed, so
	// that Close stops every child and waits for every goroutine.
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		closeAll()
		return nil, nil, ErrPoolClosed
	}
	p.wg.Add(3)
	p.mu.Unlock()
	err = cmd.Start()
	// The child holds its ends now (or never will).
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		p.wg.Add(-3)
		inW.Close()
		outR.Close()
		errR.Close()
		return nil, nil, fmt.Errorf("stem: isolated: start child %s: %w", p.name, err)
	}
	c := &proc{pool: p, cmd: cmd, pid: cmd.Process.Pid, in: inW, out: outR, errp: errR,
		msgs: make(chan inbound, 8), quit: make(chan struct{}), readDone: make(chan struct{}),
		stderrDone: make(chan struct{}), exited: make(chan struct{})}
	c.log = p.log.With("child_pid", c.pid)
	p.started.Add(1)
	go func() {
		defer p.wg.Done()
		c.wait()
	}()
	go func() {
		defer p.wg.Done()
		c.readLoop()
	}()
	go func() {
		defer p.wg.Done()
		c.relayStderr()
	}()
	p.mu.Lock()
	closed := p.closed
	if !closed {
		p.live[c] = struct{}{}
	}
	p.mu.Unlock()
	if closed {
		c.stop(false)
		return nil, nil, ErrPoolClosed
	}

	timer := time.NewTimer(p.cfg.StartTimeout)
	defer timer.Stop()
	var hello *message
	hint := ""
	graceful := false // the child is sane, just not the one wanted
	const notServing = "does main call isolated.ServeIfChild (or stemcli.Main) before anything else?"
	select {
	case in := <-c.msgs:
		switch {
		case eof(in.err):
			err = fmt.Errorf("stem: isolated: child %d exited before its hello", c.pid)
			hint = notServing
		case in.err != nil:
			err = fmt.Errorf("stem: isolated: child %d broke its handshake: %w", c.pid, in.err)
			hint = notServing
		case in.m.Type != typeHello:
			err = fmt.Errorf("stem: isolated: child %d: %w: %s before hello", c.pid, ErrFrameMalformed, in.m.Type)
		case in.m.Protocol != ProtocolVersion:
			err = fmt.Errorf("stem: isolated: child %d speaks protocol version %d, the worker speaks %d",
				c.pid, in.m.Protocol, ProtocolVersion)
		default:
			// Every child, not only the first: a child of another build
			// (the binary at Path was replaced) must not run tasks.
			if missing := missingTasks(p.cfg.Registry, in.m.Tasks); len(missing) > 0 {
				err = fmt.Errorf("stem: isolated: the child process (%s) has no isolated entrypoint for %s: "+
					"build the registry the same way in the worker and in the child", p.name, strings.Join(missing, ", "))
				graceful = true
				break
			}
			hello = in.m
		}
	case <-timer.C:
		err = fmt.Errorf("stem: isolated: child %d sent no hello within %s", c.pid, p.cfg.StartTimeout)
		hint = notServing
	case <-ctx.Done():
		err = fmt.Errorf("stem: isolated: child %d not started: %w", c.pid, context.Cause(ctx))
	}
	if err != nil {
		c.stop(graceful)
		return nil, nil, c.describe(err, hint)
	}
	c.log.Debug("isolated child started", "protocol", hello.Protocol)
	return c, hello, nil
}

// readLoop decodes the child's frames onto msgs until the stream ends or
// breaks; the last inbound carries the error (io.EOF for a clean end).
func (c *proc) readLoop() {
	defer close(c.readDone)
	br := bufio.NewReaderSize(c.out, 64<<10)
	for {
		var in inbound
		payload, err := readFrame(br, c.pool.cfg.MaxFrame)
		if err != nil {
			in.err = err
		} else {
			in.m, in.err = decodeMessage(payload, typeHello, typeHeartbeat, typeExtendLease, typeProgress, typeResult, typeError)
		}
		select {
		case c.msgs <- in:
		case <-c.quit:
			return
		}
		if h := c.pool.hooks.delivered; h != nil {
			h(c, in)
		}
		if in.err != nil {
			return
		}
	}
}

// relayStderr logs the child's stderr line by line: JSON records (what
// slog.Default writes in a child) at their own level with their
// attributes, anything else as a line of output.
func (c *proc) relayStderr() {
	defer close(c.stderrDone)
	br := bufio.NewReaderSize(c.errp, 16<<10)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			c.relayLine(bytes.TrimRight(line, "\r\n"))
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

func (c *proc) relayLine(line []byte) {
	if len(line) == 0 {
		return
	}
	c.tailMu.Lock()
	if len(c.tail) == tailLines {
		c.tail = slices.Delete(c.tail, 0, 1)
	}
	c.tail = append(c.tail, string(line))
	if bytes.HasPrefix(line, []byte("panic: ")) || bytes.HasPrefix(line, []byte("fatal error: ")) {
		c.crash = string(line)
	}
	c.tailMu.Unlock()

	var rec map[string]any
	if line[0] == '{' && json.Unmarshal(line, &rec) == nil {
		msg, okMsg := rec["msg"].(string)
		lvl, okLvl := rec["level"].(string)
		var level slog.Level
		if okMsg && okLvl && level.UnmarshalText([]byte(lvl)) == nil {
			keys := make([]string, 0, len(rec))
			for k := range rec {
				if k != "msg" && k != "level" && k != "time" {
					keys = append(keys, k)
				}
			}
			slices.Sort(keys)
			attrs := make([]slog.Attr, 0, len(keys))
			for _, k := range keys {
				attrs = append(attrs, slog.Any(k, rec[k]))
			}
			c.log.LogAttrs(context.Background(), level, msg, attrs...)
			return
		}
	}
	c.log.Info("isolated child output", "line", string(line))
}

// lastOutput returns the child's last stderr lines, joined, after the
// line that began a Go crash report if there was one.
func (c *proc) lastOutput() string {
	c.tailMu.Lock()
	defer c.tailMu.Unlock()
	out := strings.Join(c.tail, " | ")
	if c.crash != "" && !slices.Contains(c.tail, c.crash) {
		out = c.crash + " | ... | " + out
	}
	return out
}

// send writes one message to the child. A child that does not take it
// within WriteTimeout is broken.
func (c *proc) send(m *message) error {
	b, err := encodeMessage(m)
	if err != nil {
		return err
	}
	_ = c.in.SetWriteDeadline(time.Now().Add(c.pool.cfg.WriteTimeout))
	if err := writeFrame(c.in, b, c.pool.cfg.MaxFrame); err != nil {
		return fmt.Errorf("stem: isolated: send %s to child %d: %w", m.Type, c.pid, err)
	}
	return nil
}

// healthy reports whether an idle child can take a task. It answers, with
// an error, the checkpoints the child sent while idle (from a goroutine a
// task left behind); anything else the child sent since its last run (a
// second result, say) means it is broken, and it must be replaced rather
// than fail the next, unrelated task with it. A frame still on its way
// is dealt with by the next run, which fails if it is not a checkpoint.
func (c *proc) healthy() bool {
	select {
	case <-c.exited:
		return false
	case <-c.readDone:
		return false
	default:
	}
	for {
		var in inbound
		select {
		case in = <-c.msgs:
		default:
			return true
		}
		if in.err != nil {
			c.log.Warn("isolated child's stream broke while idle", "err", in.err)
			return false
		}
		switch m := in.m; m.Type {
		case typeHeartbeat, typeExtendLease, typeProgress:
			if m.Run > c.runs {
				c.log.Warn("isolated child sent a checkpoint for a run never sent", "type", m.Type, "run", m.Run)
				return false
			}
			if err := c.send(&message{Type: typeReply, Run: m.Run, Seq: m.Seq, Error: encodeCause(errReturned)}); err != nil {
				c.log.Warn("isolated child does not read its stdin", "err", err)
				return false
			}
		default:
			c.log.Warn("isolated child sent a message while idle", "type", m.Type, "run", m.Run)
			return false
		}
	}
}

// errReturned answers a checkpoint of a run that already ended.
var errReturned = errors.New("stem: isolated: checkpoint of a task that already returned")

// closeIn closes the child's stdin: a child that reads end of file exits.
func (c *proc) closeIn() { c.inOnce.Do(func() { c.in.Close() }) }

// stop ends the child and releases everything the worker holds for it.
// Graceful, it first closes the child's stdin and gives it KillGrace to
// exit; then (or at once) it sends SIGTERM to the child's process group,
// and SIGKILL after KillGrace more; signals stop once the child was
// reaped (see wait). It returns once the process was reaped and its
// streams closed; concurrent calls all wait for that.
func (c *proc) stop(graceful bool) {
	c.stopOnce.Do(func() {
		grace := c.pool.cfg.KillGrace
		if graceful {
			c.closeIn()
			if c.waitExit(grace) {
				c.cleanup()
				return
			}
		}
		c.signal(sigTerm)
		if !c.waitExit(grace) {
			c.signal(sigKill)
			if !c.waitExit(5 * time.Second) {
				c.log.Error("isolated child survives SIGKILL; abandoning it")
			}
		}
		// Processes the task started may still hold the child's streams
		// (wait killed them already where it can wait without reaping).
		c.signal(sigKill)
		c.cleanup()
	})
}

// wait reaps the child and then closes exited. Where the system can wait
// for the child's exit without reaping it, it first kills what is left of
// the child's process group, the processes its tasks started, while the
// unreaped child keeps the group's id from being reused: a child that
// exits, however it exits (retired, crashed, killed), leaves nothing
// running behind it.
func (c *proc) wait() {
	defer close(c.exited)
	if awaitExit(c.pid) {
		c.sigMu.Lock()
		defer c.sigMu.Unlock()
		c.pool.hooks.signal(c.cmd.Process, sigKill)
		c.waitErr = c.cmd.Wait()
		c.reaped = true
		return
	}
	err := c.cmd.Wait()
	c.sigMu.Lock()
	c.waitErr, c.reaped = err, true
	c.sigMu.Unlock()
}

// signal sends s to the child's process group, unless the child was
// reaped: its pid may belong to another process by now.
func (c *proc) signal(s sig) {
	c.sigMu.Lock()
	defer c.sigMu.Unlock()
	if !c.reaped {
		c.pool.hooks.signal(c.cmd.Process, s)
	}
}

// waitExit waits up to d for the child to be reaped.
func (c *proc) waitExit(d time.Duration) bool {
	select {
	case <-c.exited:
		return true
	default:
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.exited:
		return true
	case <-t.C:
		return false
	}
}

// drainWait bounds how long cleanup waits for a dead child's streams to
// reach end of file before it closes them.
const drainWait = time.Second

// cleanup closes the worker's ends of the child's streams once the child
// is gone, after letting the readers drain what the child wrote last.
func (c *proc) cleanup() {
	c.closeIn()
	t := time.NewTimer(drainWait)
	defer t.Stop()
	for _, done := range []chan struct{}{c.stderrDone, c.readDone} {
		select {
		case <-done:
		case <-t.C:
		}
	}
	close(c.quit)
	c.out.Close()
	c.errp.Close()
	<-c.readDone
	<-c.stderrDone
	c.pool.forget(c)
}

// exitStatus describes how the child ended ("exit status 3", "signal:
// killed"), or "running".
func (c *proc) exitStatus() string {
	select {
	case <-c.exited:
	default:
		return "running"
	}
	if c.waitErr == nil {
		return "exit status 0"
	}
	var ee *exec.ExitError
	if errors.As(c.waitErr, &ee) {
		return ee.String()
	}
	return c.waitErr.Error()
}

// describe adds to err how the child ended and its last output, once it
// was stopped, with hint when the child never got as far as its hello.
func (c *proc) describe(err error, hint string) error {
	msg := fmt.Sprintf("(child %s", c.exitStatus())
	if out := c.lastOutput(); out != "" {
		msg += "; last output: " + out
	}
	msg += ")"
	if hint != "" {
		msg += "; " + hint
	}
	return fmt.Errorf("%w %s", err, msg)
}

// eof reports whether err is the clean end of the child's stream.
func eof(err error) bool { return errors.Is(err, io.EOF) }
