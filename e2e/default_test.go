package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stem-go/stem/stemtype"
)

// TestDefaultStoreAcrossProcesses is the README's walkthrough: with no
// STEM_*_URL set, a worker started in one process and the commands of
// others (ping, enqueue, status, inspect, revoke) meet on the embedded
// default, one SQLite file in the state directory, which the first
// command creates.
func TestDefaultStoreAcrossProcesses(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "state")
	c := &cluster{t: t, ns: "e2e-" + randomHex(6)}
	c.vars = map[string]string{"STEM_HOME": home, "STEM_NAMESPACE": c.ns}
	c.startWorker("w1")
	if _, err := os.Stat(filepath.Join(home, "stem.db")); err != nil {
		t.Fatalf("the default file: %v", err)
	}
	if got := workerIDs(c.replies("worker", "ping")); !slices.Equal(got, []string{"w1"}) {
		t.Fatalf("ping answered by %v, want [w1]", got)
	}
	id := c.enqueue("demo.echo", `{"hello":"world"}`)
	if s := c.waitState(id, "succeeded"); !jsonEqual(t, s.Result, `{"hello":"world"}`) {
		t.Errorf("result = %s", s.Result)
	}
	g := newGate(t)
	long := c.enqueue("demo.sleep", g.sleepArgs())
	c.waitState(long, "started")
	if in := c.inspect("w1"); !slices.ContainsFunc(in.Active, func(a stemtype.ActiveTask) bool { return a.ID == long }) {
		t.Errorf("inspect does not show %s running: %s", long, mustJSON(in))
	}
	c.must("worker", "revoke", "--task", long, "--terminate")
	c.waitState(long, "cancelled")
	// stats names the store, and it is the default file.
	if st := c.stats("w1"); !strings.Contains(st.Stores.Broker, filepath.Join(home, "stem.db")) {
		t.Errorf("worker's broker = %q, want the default file in %s", st.Stores.Broker, home)
	}
}
