package e2e

import (
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/stem-go/stem/stemtype"
)

// TestRevokeByName: `stem worker revoke --name TASK --terminate` stops the
// running task of that name and every task of that name the worker meets
// later, leaves other tasks alone, and a worker started after the revoke
// honours it too (it loads the record from the store). Bad flags exit 64.
func TestRevokeByName(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		w1 := c.startWorker("w1", "--concurrency", "2")
		running := c.enqueue("demo.sleep", `{"seconds":30,"heartbeat":0.05}`)
		c.waitState(running, "started")

		r := c.run("worker", "revoke", "--name", "demo.sleep", "--terminate", "--expires-in", "1h",
			"--reason", "bad deploy", "--requester", "e2e", "--worker", "w1", "--json")
		if r.code != 0 {
			t.Fatalf("revoke --name: %s", r)
		}
		// The worker's re-sync may terminate the task before the command
		// arrives; then it is no longer in flight when the command applies.
		if p := revokeReply(t, r, "w1"); !slices.Equal(p.Names, []string{"demo.sleep"}) || len(p.Tasks) != 0 ||
			(len(p.Inflight) > 0 && !slices.Equal(p.Inflight, []string{running})) {
			t.Errorf("revoke reply = %s, want the name demo.sleep applied, no task ids, the running task signalled", mustJSON(p))
		}
		checkRevokedMeta(t, c.waitState(running, "cancelled"), "bad deploy", "e2e")

		later := c.enqueue("demo.sleep", `{"seconds":30}`)
		echo := c.enqueue("demo.echo", `{"a":1}`)
		checkRevokedMeta(t, c.waitState(later, "cancelled"), "bad deploy", "e2e")
		c.waitState(echo, "succeeded")
		var held *stemtype.RevokeRecord
		for _, rec := range c.inspect("w1").Revoked {
			if rec.Kind == stemtype.RevokeKindName && rec.Name == "demo.sleep" {
				held = &rec
			}
		}
		if held == nil || !held.Terminate || held.Reason != "bad deploy" {
			t.Errorf("inspect --include-revoked does not show the revoke by name: %+v", held)
		}

		// A worker that starts after the revoke honours it.
		if err := w1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := w1.wait(t); code != 0 {
			t.Fatalf("w1 exit %d", code)
		}
		offline := c.enqueue("demo.sleep", `{"seconds":30}`)
		c.startWorker("w2")
		checkRevokedMeta(t, c.waitState(offline, "cancelled"), "bad deploy", "e2e")
		c.waitState(c.enqueue("demo.echo", `{"b":2}`), "succeeded")

		// Human output names what was revoked.
		r = c.run("worker", "revoke", "--name", "demo.fail", "--worker", "w2")
		if r.code != 0 || !strings.Contains(r.stdout, "every task of 1 name(s)") || !strings.Contains(r.stdout, "demo.fail") {
			t.Errorf("revoke --name, human output: %s", r)
		}
		for _, args := range [][]string{
			{"worker", "revoke"},
			{"worker", "revoke", "--name", ""},
			{"worker", "revoke", "--name", "demo.echo", "--wait"},
			{"worker", "revoke", "--task", "\x1fname:demo.echo"},
		} {
			if r := c.run(args...); r.code != 64 {
				t.Errorf("%q: want exit 64, got %s", args, r)
			}
		}
	})
}
