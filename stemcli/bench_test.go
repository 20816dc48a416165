package stemcli_test

import (
	"regexp"
	"strings"
	"testing"
)

// TestBenchInProcess: bench drains (and, in mixed mode, processes while
// enqueueing) every task it enqueued on the memory:// broker, with and
// without a result backend, and reports both rates.
func TestBenchInProcess(t *testing.T) {
	e := newCLIEnv(t)
	rate := regexp.MustCompile(`(?m)^enqueue +\d+ tasks/s .*\n(?s:.*)^process +\d+ tasks/s`)
	for _, args := range [][]string{
		{"bench", "--tasks", "20", "--batch", "7", "--concurrency", "2"},
		{"bench", "--tasks", "20", "--batch", "7", "--mode", "mixed", "--results=false"},
	} {
		code, out, errOut := e.run(args...)
		if code != 0 || !rate.MatchString(out) {
			t.Errorf("%q: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, out, errOut)
		}
		if strings.Contains(out+errOut, "\r") {
			t.Errorf("%q: a progress bar was drawn off a terminal:\n%q", args, out+errOut)
		}
	}
	// The help states the real prefetch default.
	if code, out, _ := e.run("bench", "--help"); code != 0 || !strings.Contains(out, "worker prefetch cap (default: 4 x concurrency)") {
		t.Errorf("bench --help: exit %d, want the prefetch default stated:\n%s", code, out)
	}
	if code, _, _ := e.run("bench", "--mode", "sideways"); code != 64 {
		t.Errorf("bench --mode sideways: exit %d, want 64", code)
	}
}
