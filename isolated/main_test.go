package isolated_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/stem-go/stem/internal/testutil"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/isolated"
)

// The test binary plays both roles, as a program using package isolated
// does: TestMain serves the child role when a Pool started it, with the
// registry testRegistry builds in both roles.

// envRogue makes a child of the test binary speak a broken protocol by
// hand instead of serving tasks (see rogue).
const envRogue = "ISOLATED_TEST_ROGUE"

// envForget makes a child of the test binary forget ServeIfChild and call
// NewPool, recording its pid in the directory it names (see forget).
const envForget = "ISOLATED_TEST_FORGET"

func TestMain(m *testing.M) {
	if mode := os.Getenv(envRogue); mode != "" && isolated.IsChild() {
		os.Exit(rogue(mode))
	}
	if dir := os.Getenv(envForget); dir != "" && isolated.IsChild() {
		os.Exit(forget(dir))
	}
	isolated.ServeIfChild(testRegistry())
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	// Children built with the race detector would sleep a second at exit.
	os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	dir, err := os.MkdirTemp("", "stem-isolated-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "isolated tests:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	// The end-to-end tests need the stem binary, and Redis; without Redis
	// they skip (or fail, under STEM_TEST_REQUIRE_SERVICES=1), so the
	// binary is only built when Redis answers.
	flag.Parse()
	fuzzWorker := flag.Lookup("test.fuzzworker") != nil && flag.Lookup("test.fuzzworker").Value.String() == "true"
	redisErr = testutil.PingRedis(testutil.RedisURL())
	if redisErr == nil && !fuzzWorker {
		stemBin = filepath.Join(dir, "stem")
		if err := buildStem(stemBin); err != nil {
			fmt.Fprintln(os.Stderr, "isolated tests:", err)
			return 1
		}
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "isolated tests: leaked goroutines:", err)
			code = 1
		}
	}
	return code
}

var (
	// stemBin is the stem binary TestMain built, when Redis answers.
	stemBin string
	// redisErr is why Redis did not answer TestMain's ping.
	redisErr error
)

func buildStem(out string) error {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	mod := strings.TrimSpace(string(gomod))
	if err != nil || mod == "" || mod == os.DevNull {
		return fmt.Errorf("cannot locate the module root (go env GOMOD: %q, %v)", mod, err)
	}
	args := []string{"build"}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "-o", out, "./cmd/stem")
	build := exec.Command("go", args...)
	build.Dir = filepath.Dir(mod)
	if b, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// needRedis returns the test Redis URL, or skips t (fails it, under
// STEM_TEST_REQUIRE_SERVICES=1) when Redis did not answer TestMain's ping,
// in which case the stem binary was not built either.
func needRedis(t testing.TB) string {
	t.Helper()
	if redisErr != nil {
		testutil.SkipOrFail(t, "Redis unreachable (set %s): %v", testutil.EnvRedisURL, redisErr)
	}
	return testutil.RedisURL()
}

// pidResult is what several test tasks return: the child's pid.
type pidResult struct {
	PID int `json:"pid"`
}

// signalsResult is what test.signals returns: the error text of each
// checkpoint ("" for nil).
type signalsResult struct {
	Heartbeat   string `json:"heartbeat"`
	ExtendLease string `json:"extendLease"`
	Progress    string `json:"progress"`
}

// testRegistry builds the registry of the test binary, in both roles.
func testRegistry() *stem.Registry {
	reg := stem.NewRegistry()
	iso := func(name string, fn func(tc *stem.TaskContext, args stem.Args) (any, error)) {
		stem.Register(reg, name, fn, stem.TaskOptions{Isolated: true})
	}
	registerExample(reg)
	iso("test.echo", func(tc *stem.TaskContext, args stem.Args) (any, error) {
		return map[string]any{"args": json.RawMessage(args), "pid": os.Getpid(), "task_id": tc.TaskID(), "attempt": tc.Attempt()}, nil
	})
	iso("test.pid", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		return pidResult{PID: os.Getpid()}, nil
	})
	iso("test.noop", func(tc *stem.TaskContext, _ stem.Args) (any, error) { return nil, nil })
	iso("test.empty-raw", func(tc *stem.TaskContext, _ stem.Args) (any, error) { return json.RawMessage{}, nil })
	// test.progress-pid reports progress with its pid as data (so a test
	// can kill it while the worker applies the checkpoint) and returns.
	iso("test.progress-pid", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		return nil, tc.Progress(50, pidResult{PID: os.Getpid()})
	})
	iso("test.signals", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		text := func(err error) string {
			if err == nil {
				return ""
			}
			return err.Error()
		}
		return signalsResult{
			Heartbeat:   text(tc.Heartbeat()),
			ExtendLease: text(tc.ExtendLease(5 * time.Second)),
			Progress:    text(tc.Progress(50, map[string]string{"k": "v"})),
		}, nil
	})
	// test.heartbeat-until-revoked heartbeats until a checkpoint fails and
	// returns that checkpoint's error.
	iso("test.heartbeat-until-revoked", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		for {
			if err := tc.Heartbeat(); err != nil {
				return nil, err
			}
			time.Sleep(5 * time.Millisecond) // pacing only: a cooperative task's unit of work
		}
	})
	// test.wait-ctx reports once (so the test knows it runs), waits for
	// its context and returns the time it saw it cancelled, and the cause.
	iso("test.wait-ctx", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		if err := tc.Heartbeat(); err != nil {
			return nil, err
		}
		<-tc.Done()
		return map[string]any{"cancelledAt": time.Now().UnixNano(), "cause": context.Cause(tc).Error()}, nil
	})
	// test.wait-ctx-err is test.wait-ctx returning the cause as its error.
	iso("test.wait-ctx-err", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		if err := tc.Heartbeat(); err != nil {
			return nil, err
		}
		<-tc.Done()
		return nil, context.Cause(tc)
	})
	// test.spin reports once, then ignores its context and never calls a
	// checkpoint again: only a kill stops it.
	iso("test.spin", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		if err := tc.Heartbeat(); err != nil {
			return nil, err
		}
		x := 0
		for {
			x++
		}
	})
	stem.Register(reg, "test.spin-limited", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		for {
		}
	}, stem.TaskOptions{Isolated: true, TimeLimit: 100 * time.Millisecond})
	stem.Register(reg, "test.retry-after", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		if tc.Attempt() == 0 {
			return nil, stem.RetryAfter(10*time.Millisecond, errors.New("test.retry-after: not yet"))
		}
		return "second time lucky", nil
	}, stem.TaskOptions{Isolated: true, MaxRetries: 1})
	// test.extend-then-spin asks for a lease extension, then ignores its
	// context and every checkpoint.
	iso("test.extend-then-spin", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		if err := tc.ExtendLease(time.Minute); err != nil {
			return nil, err
		}
		x := 0
		for {
			x++
		}
	})
	// test.grandchild starts a process that outlives the task, sleep 60,
	// and returns its pid.
	iso("test.grandchild", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		return pidResult{PID: cmd.Process.Pid}, nil
	})
	iso("test.panic", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		panic("test.panic: boom")
	})
	iso("test.goroutine-panic", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		go panic("test.goroutine-panic: unrecoverable")
		select {}
	})
	iso("test.exit", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		fmt.Fprintln(os.Stderr, "test.exit: leaving with status 3")
		os.Exit(3)
		return nil, nil
	})
	iso("test.fail", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		return nil, fmt.Errorf("test.fail: attempt %d failed", tc.Attempt())
	})
	iso("test.noretry", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		return nil, stem.NoRetry(errors.New("test.noretry: hopeless"))
	})
	// test.stdio prints to stdout, logs, and reads stdin: none of it may
	// touch the protocol.
	iso("test.stdio", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		fmt.Println("test.stdio: printed on stdout")
		tc.Logger().Warn("test.stdio: logged", "answer", 42)
		n, err := os.Stdin.Read(make([]byte, 64))
		return map[string]any{"stdinBytes": n, "stdinEOF": errors.Is(err, io.EOF)}, nil
	})
	// test.heartbeats calls Heartbeat n times: a checkpoint's round trip.
	iso("test.heartbeats", func(tc *stem.TaskContext, args stem.Args) (any, error) {
		var a struct {
			N int `json:"n"`
		}
		if err := args.Decode(&a); err != nil {
			return nil, err
		}
		for range a.N {
			if err := tc.Heartbeat(); err != nil {
				return nil, err
			}
		}
		return nil, nil
	})
	// test.log-cancel heartbeats once, waits for its context and logs the
	// time it saw it cancelled: the worker relays the record.
	iso("test.log-cancel", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		if err := tc.Heartbeat(); err != nil {
			return nil, err
		}
		<-tc.Done()
		tc.Logger().Info("bench: context cancelled", "cancelled_at", time.Now().UnixNano())
		return nil, tc.Heartbeat()
	})
	stem.Register(reg, "bench.noop-inline", func(tc *stem.TaskContext, _ stem.Args) (any, error) { return nil, nil }, stem.TaskOptions{})
	iso("test.big", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		return strings.Repeat("x", 8<<10), nil
	})
	return reg
}

// forget is a main that forgets to serve the child role: it builds a pool
// of its own. It records its pid in dir, and stops a chain of such
// processes at the fourth, should NewPool let one start.
func forget(dir string) int {
	if err := os.WriteFile(filepath.Join(dir, strconv.Itoa(os.Getpid())), nil, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "forgetful child:", err)
		return 1
	}
	if entries, _ := os.ReadDir(dir); len(entries) > 3 {
		fmt.Fprintln(os.Stderr, "forgetful child: chain cap reached")
		return 9
	}
	p, err := isolated.NewPool(isolated.PoolConfig{Registry: testRegistry(), Size: 1, StartTimeout: waitTimeout})
	if err != nil {
		fmt.Fprintln(os.Stderr, "forgetful child: NewPool:", err)
		return 1
	}
	p.Close()
	return 0
}

// rogue speaks the protocol by hand, as a child in another language
// would, and breaks it as mode says. It returns the exit code.
func rogue(mode string) int {
	in, out := bufio.NewReader(os.Stdin), os.Stdout
	write := func(b []byte) { _, _ = out.Write(b) }
	send := func(v any) {
		b, _ := json.Marshal(v)
		write(append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...))
	}
	hello := func() {
		names := []string{}
		reg := testRegistry()
		for _, n := range reg.Names() {
			if t, _ := reg.Lookup(n); t.IsIsolated() {
				names = append(names, n)
			}
		}
		send(map[string]any{"type": "hello", "protocol": 1, "pid": os.Getpid(), "tasks": names})
	}
	// readRun reads frames until a run and returns its run number.
	readRun := func() float64 {
		for {
			var hdr [4]byte
			if _, err := io.ReadFull(in, hdr[:]); err != nil {
				os.Exit(0)
			}
			buf := make([]byte, binary.BigEndian.Uint32(hdr[:]))
			if _, err := io.ReadFull(in, buf); err != nil {
				os.Exit(0)
			}
			var m map[string]any
			_ = json.Unmarshal(buf, &m)
			if m["type"] == "run" {
				return m["run"].(float64)
			}
		}
	}
	// linger waits for the worker to close stdin (or kill us).
	linger := func() int {
		_, _ = io.Copy(io.Discard, in)
		return 0
	}
	fmt.Fprintf(os.Stderr, "rogue child: mode %s\n", mode)
	switch mode {
	case "exit-before-hello":
		return 7
	case "no-hello":
		return linger()
	case "bad-version":
		send(map[string]any{"type": "hello", "protocol": 99, "pid": os.Getpid()})
		return linger()
	case "garbage-hello":
		write([]byte("hello world\n"))
		return linger()
	}
	hello()
	if mode == "double-result" {
		// A buggy child: each task's outcome twice.
		for {
			r := readRun()
			send(map[string]any{"type": "result", "run": r, "result": "first"})
			send(map[string]any{"type": "result", "run": r, "result": "again"})
		}
	}
	run := readRun()
	switch mode {
	case "oversized":
		write(binary.BigEndian.AppendUint32(nil, 0x7fffffff))
		write(bytes.Repeat([]byte("x"), 100))
	case "truncated":
		write(binary.BigEndian.AppendUint32(nil, 100))
		write([]byte(`{"type":"res`))
		return 0
	case "empty":
		write(binary.BigEndian.AppendUint32(nil, 0))
	case "not-json":
		b := []byte("this is not json")
		write(append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...))
	case "unknown-type":
		send(map[string]any{"type": "bogus", "run": run})
	case "wrong-run":
		send(map[string]any{"type": "result", "run": run + 7, "result": 1})
	case "hello-again":
		hello()
	case "silent-exit":
		return 5
	default:
		fmt.Fprintf(os.Stderr, "rogue child: unknown mode %q\n", mode)
		return 1
	}
	return linger()
}

// testLogger returns a logger recording text records in buf; the records
// are printed if t fails, and a data race reported by a race-enabled child
// fails t.
func testLogger(t testing.TB) (*slog.Logger, *testutil.SyncBuffer) {
	buf := &testutil.SyncBuffer{}
	t.Cleanup(func() {
		if strings.Contains(buf.String(), "DATA RACE") {
			t.Errorf("a child reported a data race:\n%s", buf)
		} else if t.Failed() && buf.String() != "" {
			t.Logf("log:\n%s", buf)
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}
