package e2e

import (
	"strings"
	"testing"

	"github.com/stem-go/stem/stemtype"
)

// TestRevokeWait: `revoke --wait` waits until the running tasks it
// revoked have stopped and reports each task's outcome: terminated (was
// running, stopped), not-running (known, not running anywhere), unknown
// (not running, and no result recorded), still-running (the wait timed
// out, exit 1).
func TestRevokeWait(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		c.startWorker("rw1", "--concurrency", "2")
		g := newGate(t)
		running := c.enqueue("demo.sleep", g.sleepArgs())
		later := c.enqueue("demo.echo", "null", "--countdown", "1h")
		unknown := "never-enqueued-" + randomHex(4)
		c.waitState(running, "started")

		reps := c.replies("worker", "revoke", "--terminate", "--wait", "--task", running, "--task", later,
			"--task", unknown, "--worker", "rw1")
		rep := only(t, reps, "rw1")
		var p struct {
			stemtype.RevokeReply
			Outcomes map[string]string `json:"outcomes"`
		}
		decodeOne(t, string(rep.Payload), &p)
		want := map[string]string{running: "terminated", later: "not-running", unknown: "unknown"}
		for id, o := range want {
			if p.Outcomes[id] != o {
				t.Errorf("outcome of %s = %q, want %q (payload %s)", id, p.Outcomes[id], o, rep.Payload)
			}
		}
		if len(p.Outcomes) != len(want) {
			t.Errorf("outcomes = %v", p.Outcomes)
		}
		c.waitState(running, "cancelled")

		// Without --terminate a running task runs on: the wait times out.
		g2 := newGate(t)
		long := c.enqueue("demo.sleep", g2.sleepArgs())
		c.waitState(long, "started")
		r := c.run("worker", "revoke", "--wait", "--wait-timeout", "300ms", "--task", long, "--worker", "rw1")
		if r.code != 1 || !strings.Contains(r.stderr, "still running") || !strings.Contains(r.stdout, "still-running") {
			t.Errorf("revoke --wait of a task that runs on: %s", r)
		}
		g2.open(t)
		c.waitState(long, "succeeded")

		r = c.run("worker", "revoke", "--task", "x", "--wait-timeout", "1s")
		if r.code != 64 || !strings.Contains(r.stderr, "--wait") {
			t.Errorf("--wait-timeout without --wait: %s", r)
		}
	})
}
