package e2e

import (
	"os"
	"strings"
	"testing"
)

// TestCompletion: `stem completion bash|zsh|fish` prints a script, and
// --worker completes with the ids of the live workers, from presence.
func TestCompletion(t *testing.T) {
	t.Parallel()
	for _, shell := range []string{"bash", "zsh", "fish"} {
		r := runStem(t, environ(), "completion", shell)
		if r.code != 0 || !strings.Contains(r.stdout, "stem") || len(r.stdout) < 1000 {
			t.Errorf("completion %s: exit %d, %d bytes", shell, r.code, len(r.stdout))
		}
	}
	if r := runStem(t, environ(), "completion", "tcsh"); r.code != 64 {
		t.Errorf("completion of an unknown shell: %s", r)
	}
	// No store to ask: nothing completed, no error on stdout.
	r := runStem(t, environ(map[string]string{"STEM_BROKER_URL": deadRedis}), "__complete", "worker", "ping", "--worker", "")
	if r.code != 0 || strings.Contains(r.stdout, "\t") || !strings.HasPrefix(r.stdout, ":4") {
		t.Errorf("completion with no store: %s", r)
	}
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		c.startWorker("comp-1")
		c.startWorker("other-1")
		host, _ := os.Hostname()
		for _, args := range [][]string{
			{"worker", "ping", "--worker", "comp"},
			{"worker", "revoke", "--task", "x", "--worker", "comp"},
			{"task", "where", "x", "--worker", "comp"},
		} {
			out := c.must(append([]string{"__complete"}, args...)...)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 2 || lines[0] != "comp-1\t"+host || lines[1] != ":4" {
				t.Errorf("__complete %v = %q, want comp-1 alone", args, out)
			}
		}
		out := c.must("__complete", "worker", "inspect", "--worker", "other-1", "--worker", "")
		if !strings.Contains(out, "comp-1\t") || strings.Contains(out, "other-1\t") {
			t.Errorf("completion of a second --worker = %q, want comp-1 and not other-1 again", out)
		}
	})
}
