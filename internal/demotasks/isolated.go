package demotasks

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/stem-go/stem"
)

// SpinArgs are the arguments of demo.spin-isolated.
type SpinArgs struct {
	// Seconds to burn CPU for.
	Seconds float64 `json:"seconds"`
}

// CrashArgs are the arguments of demo.crash-isolated.
type CrashArgs struct {
	// Mode is "panic" (the entrypoint panics), "exit" (the child process
	// exits mid-task), "kill" (the child sends itself SIGKILL, as the OOM
	// killer or an operator would) or "garbage" (the child writes junk on
	// every pipe it holds, its protocol stream among them, as a buggy
	// library writing to the wrong descriptor would, then waits to be
	// stopped).
	Mode string `json:"mode"`
	// Code is the exit status for mode "exit"; default 3.
	Code int `json:"code"`
}

// RegisterIsolated adds the isolated demo tasks to reg, each run in a
// child process of the worker: demo.sleep-isolated, demo.spin-isolated and
// demo.crash-isolated. A program registers them in both roles (see package
// isolated).
func RegisterIsolated(reg *stem.Registry) {
	stem.Register(reg, "demo.sleep-isolated", SleepIsolated, stem.TaskOptions{Isolated: true})
	stem.Register(reg, "demo.spin-isolated", Spin, stem.TaskOptions{Isolated: true})
	stem.Register(reg, "demo.crash-isolated", Crash, stem.TaskOptions{Isolated: true})
}

// SleepIsolated is demo.sleep in a child process: it heartbeats and
// reports progress every a.Heartbeat seconds, so `revoke --terminate` stops
// it at its next checkpoint. Its result adds the child's pid.
func SleepIsolated(tc *stem.TaskContext, a SleepArgs) (any, error) {
	res, err := Sleep(tc, a)
	if err != nil {
		return nil, err
	}
	out := map[string]any{"pid": os.Getpid()}
	if m, ok := res.(map[string]float64); ok {
		for k, v := range m {
			out[k] = v
		}
	}
	return out, nil
}

// Spin burns CPU in a child process for a.Seconds. It never calls a
// checkpoint and ignores its context, as a runaway task would: only
// `revoke --terminate --kill-after DURATION` (or a time limit) stops it
// early.
func Spin(tc *stem.TaskContext, a SpinArgs) (any, error) {
	if a.Seconds < 0 {
		return nil, stem.NoRetry(errors.New("demo.spin-isolated: seconds must not be negative"))
	}
	total := time.Duration(a.Seconds * float64(time.Second))
	start := time.Now()
	x := uint64(1)
	for time.Since(start) < total {
		for range 1 << 16 {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	return map[string]any{"spun": time.Since(start).Seconds(), "pid": os.Getpid(), "x": x % 1000}, nil
}

// Crash makes its child process fail mid-task, to show that a crash fails
// the task, never the worker, and that the next task gets a fresh child.
func Crash(tc *stem.TaskContext, a CrashArgs) (any, error) {
	switch a.Mode {
	case "panic":
		panic(fmt.Sprintf("demo.crash-isolated: panic requested (pid %d)", os.Getpid()))
	case "exit":
		code := a.Code
		if code == 0 {
			code = 3
		}
		fmt.Fprintf(os.Stderr, "demo.crash-isolated: exiting with status %d (pid %d)\n", code, os.Getpid())
		os.Exit(code)
	case "kill", "garbage":
		return nil, crashHard(tc, a.Mode)
	}
	return nil, stem.NoRetry(fmt.Errorf("demo.crash-isolated: mode %q: want \"panic\", \"exit\", \"kill\" or \"garbage\"", a.Mode))
}
