// Package demotasks holds the tasks the stock stem binary registers, so that
// every feature can be tried and tested without writing Go (DESIGN.md §5).
package demotasks

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/stem-go/stem"
)

// SleepArgs are the arguments of demo.sleep.
type SleepArgs struct {
	// Seconds to sleep in all.
	Seconds float64 `json:"seconds"`
	// Heartbeat is the interval between checkpoints in seconds; default 0.1.
	Heartbeat float64 `json:"heartbeat"`
	// UntilFile, when set, ends the sleep early, successfully, once a file
	// exists at this path (looked for at every checkpoint): a test or a
	// script decides when the task ends instead of guessing a duration.
	UntilFile string `json:"untilFile"`
}

// FlakyArgs are the arguments of demo.flaky.
type FlakyArgs struct {
	// Failures is how many attempts fail before one succeeds.
	Failures int `json:"failures"`
}

// Register adds the inline demo tasks to reg: demo.echo, demo.sleep,
// demo.fail and demo.flaky.
func Register(reg *stem.Registry) {
	quickRetry := stem.ExponentialBackoff{Base: 100 * time.Millisecond, Max: 2 * time.Second, Jitter: 0.2}
	stem.Register(reg, "demo.echo", func(tc *stem.TaskContext, args stem.Args) (any, error) {
		return args, nil
	}, stem.TaskOptions{})
	stem.Register(reg, "demo.sleep", Sleep, stem.TaskOptions{})
	stem.Register(reg, "demo.fail", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		return nil, fmt.Errorf("demo.fail always fails (attempt %d)", tc.Attempt())
	}, stem.TaskOptions{RetryPolicy: quickRetry})
	stem.Register(reg, "demo.flaky", func(tc *stem.TaskContext, a FlakyArgs) (any, error) {
		if tc.Attempt() < a.Failures {
			return nil, fmt.Errorf("demo.flaky: failing attempt %d of %d planned failures", tc.Attempt()+1, a.Failures)
		}
		return map[string]int{"succeededOnAttempt": tc.Attempt()}, nil
	}, stem.TaskOptions{MaxRetries: 5, RetryPolicy: quickRetry})
}

// Sleep sleeps a.Seconds, calling Heartbeat and Progress every a.Heartbeat
// seconds, and stops with the checkpoint's error once revoked.
func Sleep(tc *stem.TaskContext, a SleepArgs) (any, error) {
	if a.Seconds < 0 || a.Heartbeat < 0 {
		return nil, stem.NoRetry(errors.New("demo.sleep: seconds and heartbeat must not be negative"))
	}
	every := time.Duration(a.Heartbeat * float64(time.Second))
	if every <= 0 {
		every = 100 * time.Millisecond
	}
	total := time.Duration(a.Seconds * float64(time.Second))
	start := time.Now()
	t := time.NewTimer(0)
	defer t.Stop()
	<-t.C
	for {
		elapsed := time.Since(start)
		if elapsed >= total || a.UntilFile != "" && fileExists(a.UntilFile) {
			return map[string]float64{"slept": elapsed.Seconds()}, nil
		}
		if err := tc.Progress(min(100, 100*elapsed.Seconds()/max(total.Seconds(), 1e-9)), nil); err != nil {
			return nil, err
		}
		t.Reset(min(every, total-elapsed))
		select {
		case <-tc.Done():
			// The next checkpoint reports why (revoke, time limit, shutdown).
			return nil, tc.Heartbeat()
		case <-t.C:
		}
		if err := tc.Heartbeat(); err != nil {
			return nil, err
		}
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
