package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// waitHolder polls `task where` until worker holds the task running.
func (c *cluster) waitHolder(id, worker string) {
	c.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		var doc whereDoc
		r := c.run("task", "where", id, "--json")
		if r.code == 0 {
			decodeOne(c.t, r.stdout, &doc)
			if len(doc.Holders) == 1 && doc.Holders[0].Worker == worker && doc.Holders[0].State == "running" {
				return
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("task %s never ran on %s; last: %s", id, worker, r)
		}
		time.Sleep(pollEvery)
	}
}

// TestWorkerShutdown: `stem worker shutdown` stops the targeted worker,
// which replies first: warm lets its running task finish there; soft and
// hard release it, and another worker runs it.
func TestWorkerShutdown(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)

		// Warm: the running task finishes on the worker, which then exits 0.
		warm := c.startWorker("warm-1")
		g := newGate(t)
		id := c.enqueue("demo.sleep", g.sleepArgs())
		c.waitHolder(id, "warm-1")
		rep := only(t, c.replies("worker", "shutdown", "--worker", "warm-1"), "warm-1")
		var p stemtype.ShutdownReply
		decodeOne(t, string(rep.Payload), &p)
		if p.Mode != "warm" || p.Inflight != 1 {
			t.Errorf("shutdown reply = %s", rep.Payload)
		}
		warm.waitLog(t, "shutdown requested")
		g.open(t)
		if code := warm.wait(t); code != 0 {
			t.Fatalf("warm shutdown: exit %d", code)
		}
		if s := c.waitState(id, "succeeded"); s.Task != "demo.sleep" {
			t.Errorf("status %+v", s)
		}

		for _, mode := range []string{"soft", "hard"} {
			t.Run(mode, func(t *testing.T) {
				c := c.with(t)
				victim := c.startWorker(mode + "-1")
				g := newGate(t)
				id := c.enqueue("demo.sleep", g.sleepArgs())
				c.waitHolder(id, mode+"-1")
				heir := c.startWorker(mode + "-2")
				r := c.run("worker", "shutdown", "--mode", mode, "--worker", mode+"-1")
				if r.code != 0 || !strings.Contains(r.stdout, mode) || !strings.Contains(r.stdout, "1 worker(s) shutting down") {
					t.Fatalf("shutdown --mode %s: %s", mode, r)
				}
				if code := victim.wait(t); code != 0 {
					t.Fatalf("%s shutdown: exit %d", mode, code)
				}
				// Released: the other worker runs it, to the end.
				c.waitHolder(id, mode+"-2")
				g.open(t)
				c.waitState(id, "succeeded")
				if heir.exited() {
					t.Errorf("the other worker stopped too")
				}
			})
		}

		r := c.run("worker", "shutdown", "--mode", "gentle")
		if r.code != 64 || !strings.Contains(r.stderr, "--mode") {
			t.Errorf("shutdown --mode gentle: %s", r)
		}
		r = c.run("worker", "shutdown", "--worker", "nobody")
		if r.code != 70 {
			t.Errorf("shutdown of a worker that is not live: %s", r)
		}
	})
}
