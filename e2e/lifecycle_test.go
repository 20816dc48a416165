package e2e

import (
	"strings"
	"syscall"
	"testing"

	"github.com/stem-go/stem/stemtype"
)

// TestGracefulShutdown: SIGTERM lets the running task finish, and the
// worker exits 0. The task runs until the test opens its gate, after the
// worker logged its shutdown with the task in flight, so the signal reaches
// the worker while the task runs however loaded the machine is.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		// The grace period bounds the test's wait for the task, nothing more.
		w := c.startWorker("w1", "--shutdown-timeout", "5m")
		g := newGate(t)
		id := c.enqueue("demo.sleep", g.sleepArgs())
		c.waitState(id, "started")
		if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		log := w.waitLog(t, "worker shutting down")
		if i := strings.Index(log, "worker shutting down"); !strings.Contains(strings.SplitN(log[i:], "\n", 2)[0], "inflight=1") {
			t.Errorf("worker log does not show a shutdown with the task in flight:\n%s", log)
		}
		// The worker waits for its task: still running, neither released nor
		// failed.
		if w.exited() {
			t.Fatalf("worker exited before its task ended:\n%s", w.stderr)
		}
		if s := c.status(id); s.State != "started" {
			t.Errorf("status during the warm shutdown = %+v, want started", s)
		}
		g.open(t)
		if code := w.wait(t); code != 0 {
			t.Errorf("worker exit code after SIGTERM = %d, want 0", code)
		}
		s := c.status(id)
		if s.State != "succeeded" || s.Attempt != 0 {
			t.Errorf("status after the warm shutdown = %+v, want succeeded", s)
		}
		if log := w.stderr.String(); !strings.Contains(log, "worker stopped") {
			t.Errorf("worker log does not show a clean stop:\n%s", log)
		}
		if r := c.run("worker", "ping", "--worker", "w1", "--timeout", "300ms"); r.code != 70 {
			t.Errorf("stopped worker still answers: %s", r)
		}
	})
}

// TestKilledWorkerLosesNothing: a worker killed with SIGKILL mid-task loses
// the task to nobody: its lease expires and a second worker completes it.
// The task runs until its gate opens, which the test does only after the
// kill, so the kill always meets it running.
func TestKilledWorkerLosesNothing(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		w1 := c.startWorker("w1", "--lease", "1s")
		g := newGate(t)
		id := c.enqueue("demo.sleep", g.sleepArgs())
		c.waitState(id, "started")
		if err := w1.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if code := w1.wait(t); code != -1 {
			t.Errorf("worker 1 exit code = %d, want -1 (killed)", code)
		}
		if s := c.status(id); s.State != "started" {
			t.Fatalf("status after the kill = %+v, want started", s)
		}

		g.open(t) // the redelivered copy ends at its first checkpoint
		c.startWorker("w2", "--lease", "1s")
		s := c.waitState(id, "succeeded")
		if s.Attempt != 0 {
			t.Errorf("redelivered task ran at attempt %d, want 0 (a crash is not a retry)", s.Attempt)
		}
		// The result is written before the message is acknowledged and
		// counted: wait for the count, then check that it ran once.
		st := c.waitStats("w2", "the task processed", func(s stemtype.StatsReply) bool { return s.Processed >= 1 })
		if st.Succeeded != 1 || st.Processed != 1 {
			t.Errorf("worker 2 stats = %s, want it to have run the task once", mustJSON(st))
		}
		c.waitStats("w2", "an empty queue", func(s stemtype.StatsReply) bool { return s.Queues["default"] == 0 })
	})
}

// TestShutdownPastGrace: a task still running when the grace period ends
// is released, not failed, and another worker runs it. The task runs until
// its gate opens, so it is still running when the grace period ends.
func TestShutdownPastGrace(t *testing.T) {
	t.Parallel()
	c := newCluster(t, redisStore)
	w1 := c.startWorker("w1", "--shutdown-timeout", "300ms")
	g := newGate(t)
	id := c.enqueue("demo.sleep", g.sleepArgs())
	c.waitState(id, "started")
	if err := w1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := w1.wait(t); code != 0 {
		t.Errorf("worker exit code = %d, want 0", code)
	}
	if s := c.status(id); stemtype.State(s.State).Final() || s.State == "retry" {
		t.Errorf("status after the grace period = %+v, want the task released, neither final nor a retry", s)
	}
	g.open(t)
	c.startWorker("w2")
	if s := c.waitState(id, "succeeded"); s.Attempt != 0 {
		t.Errorf("released task ran at attempt %d, want 0", s.Attempt)
	}
}

// TestUnknownTaskFails: a task no worker knows is retried
// (--unknown-task-retries, small here; by default 5 over about 4 minutes,
// time for a rolling deploy to bring its handler), then recorded failed
// with a clear error naming it, not lost.
func TestUnknownTaskFails(t *testing.T) {
	t.Parallel()
	c := newCluster(t, redisStore)
	c.startWorker("w1", "--unknown-task-retries", "2", "--unknown-task-backoff", "1ms")
	id := c.enqueue("no.such.task", `{}`)
	s := c.waitState(id, "failed")
	if s.Error == nil || !strings.Contains(*s.Error, "no.such.task") || !strings.Contains(*s.Error, "after 2 retries") {
		t.Errorf("status = %+v, want an error naming the task and its 2 retries", s)
	}
	if st := c.stats("w1"); st.Retried != 2 {
		t.Errorf("stats = %s, want 2 retries", mustJSON(st))
	}
	if st := c.stats("w1"); st.Failed != 1 || st.Queues["default"] != 0 {
		t.Errorf("stats = %s", mustJSON(st))
	}
}
