package e2e

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestDuplicateWorkerIDRefused: a second `stem worker start --id w1` while
// w1 is live exits 1, naming the live worker's host and pid on stderr; the
// first worker keeps answering alone.
func TestDuplicateWorkerIDRefused(t *testing.T) {
	t.Parallel()
	c := newCluster(t, redisStore)
	first := c.startWorker("w1")
	second := c.spawnWorker(nil, "w1")
	if code := second.wait(t); code != 1 {
		t.Fatalf("second worker with id w1 exited %d, want 1; output:\n%s", code, second.stderr)
	}
	host, _ := os.Hostname()
	out := second.stderr.String()
	for _, want := range []string{"stem: worker w1: id is live", "host " + host, "pid " + strconv.Itoa(first.cmd.Process.Pid)} {
		if !strings.Contains(out, want) {
			t.Errorf("stderr of the refused worker does not contain %q:\n%s", want, out)
		}
	}
	if st := c.stats("w1"); st.PID != first.cmd.Process.Pid {
		t.Errorf("w1 answered from pid %d, want the first worker's %d", st.PID, first.cmd.Process.Pid)
	}
}
