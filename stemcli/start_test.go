package stemcli_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemcli"
)

// TestWorkerStartStoppedWhileStarting: a SIGINT or SIGTERM that reaches
// `worker start` before the worker runs (while it opens its stores or loads
// the revokes) is a requested shutdown, not an outage: the command ends
// without an error (exit 0), instead of exit 69 with "context canceled"
// that tells a supervisor to retry. The signal is modelled by the command's
// context, which the signal handler derives from.
func TestWorkerStartStoppedWhileStarting(t *testing.T) {
	u := testutil.NeedRedis(t)
	for _, tc := range []struct {
		name string
		// beforeRun cancels the context before the command runs (while
		// opening); otherwise the executor hook cancels it, which runs after every store
		// is open and before the worker loads its revokes.
		beforeRun bool
	}{
		{"while opening the stores", true},
		{"while loading the revokes", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := make([]byte, 6)
			_, _ = rand.Read(b)
			ns := "cli-" + hex.EncodeToString(b)
			testutil.CleanupNamespace(t, u, ns)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.beforeRun {
				cancel()
			}
			var stdout, stderr bytes.Buffer
			env := map[string]string{"STEM_BROKER_URL": u, "STEM_NAMESPACE": ns}
			cmd := stemcli.New(stemcli.Config{
				Registry: stem.NewRegistry(),
				Stdout:   &stdout, Stderr: &stderr,
				Getenv: func(k string) string { return env[k] },
				Executor: func(*stem.Registry) (stem.Executor, func(), error) {
					cancel()
					return nil, func() {}, nil
				},
			})
			cmd.SetArgs([]string{"worker", "start", "--id", "w1"})
			if err := cmd.ExecuteContext(ctx); err != nil {
				t.Errorf("worker start stopped while starting: %v, want a clean stop\nstderr:\n%s", err, &stderr)
			}
			if strings.Contains(stderr.String(), "context canceled") {
				t.Errorf("stderr reports the stop as a failure:\n%s", &stderr)
			}
		})
	}
}

// TestWorkerStartWaitsForItsStores: `worker start` whose broker cannot be
// reached retries, logging the store and its URL with the password
// redacted at each attempt, and a signal while it waits is a clean stop
// (no error, no "context canceled" on stderr).
func TestWorkerStartWaitsForItsStores(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout bytes.Buffer
	stderr := &testutil.SyncBuffer{}
	env := map[string]string{"STEM_BROKER_URL": "redis://:hunter2@127.0.0.1:1/0", "STEM_NAMESPACE": "cli-wait"}
	cmd := stemcli.New(stemcli.Config{
		Registry: stem.NewRegistry(),
		Stdout:   &stdout, Stderr: stderr,
		Getenv: func(k string) string { return env[k] },
	})
	cmd.SetArgs([]string{"worker", "start", "--id", "w1"})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(stderr.String(), "attempt=3") {
		select {
		case err := <-done:
			t.Fatalf("worker start returned while its broker is down: %v\nstderr:\n%s", err, stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no third attempt within 20s:\nstderr:\n%s", stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("worker start stopped while waiting: %v, want a clean stop\nstderr:\n%s", err, stderr)
	}
	out := stderr.String()
	for _, s := range []string{"broker unreachable at start", "redis://:xxxxx@127.0.0.1:1/0", "retry_in="} {
		if !strings.Contains(out, s) {
			t.Errorf("stderr does not say %q:\n%s", s, out)
		}
	}
	if strings.Contains(out, "hunter2") || strings.Contains(out, "context canceled") {
		t.Errorf("stderr shows the password or reports the stop as a failure:\n%s", out)
	}
}
