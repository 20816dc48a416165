package e2e

import (
	"strings"
	"syscall"
	"testing"

	"github.com/stem-go/stem/stemtype"
)

// TestGracefulShutdown: SIGTERM lets the running task finish, and the
// worker exits 0.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	c := newCluster(t, redisStore)
	w := c.startWorker("w1", "--shutdown-timeout", "15s")
	id := c.enqueue("demo.sleep", `{"seconds":1}`)
	c.waitState(id, "started")
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := w.wait(t); code != 0 {
		t.Errorf("worker exit code after SIGTERM = %d, want 0", code)
	}
	s := c.status(id)
	if s.State != "succeeded" || s.Attempt != 0 {
		t.Errorf("status after the warm shutdown = %+v, want succeeded", s)
	}
	log := w.stderr.String()
	// The signal must have reached the worker while the task ran, or this
	// test proves nothing.
	if !strings.Contains(log, "worker shutting down") || !strings.Contains(log, "inflight=1") {
		t.Errorf("worker log does not show a shutdown with the task in flight:\n%s", log)
	}
	if !strings.Contains(log, "worker stopped") {
		t.Errorf("worker log does not show a clean stop:\n%s", log)
	}
	if r := c.run("worker", "ping", "--worker", "w1", "--timeout", "300ms"); r.code != 70 {
		t.Errorf("stopped worker still answers: %s", r)
	}
}

// TestKilledWorkerLosesNothing: a worker killed with SIGKILL mid-task loses
// the task to nobody: its lease expires and a second worker completes it.
func TestKilledWorkerLosesNothing(t *testing.T) {
	t.Parallel()
	c := newCluster(t, redisStore)
	w1 := c.startWorker("w1", "--lease", "1s")
	id := c.enqueue("demo.sleep", `{"seconds":1}`)
	c.waitState(id, "started")
	if err := w1.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := w1.wait(t); code != -1 {
		t.Errorf("worker 1 exit code = %d, want -1 (killed)", code)
	}
	if s := c.status(id); s.State != "started" {
		t.Fatalf("task finished before the kill, the test proves nothing: %+v", s)
	}

	c.startWorker("w2", "--lease", "1s")
	s := c.waitState(id, "succeeded")
	if s.Attempt != 0 {
		t.Errorf("redelivered task ran at attempt %d, want 0 (a crash is not a retry)", s.Attempt)
	}
	if st := c.stats("w2"); st.Succeeded != 1 || st.Processed != 1 {
		t.Errorf("worker 2 stats = %s, want it to have run the task", mustJSON(st))
	}
	if st := c.stats("w2"); st.Queues["default"] != 0 {
		t.Errorf("queue still holds a copy: %v", st.Queues)
	}
}

// TestShutdownPastGrace: a task still running when the grace period ends
// is released, not failed, and another worker runs it.
func TestShutdownPastGrace(t *testing.T) {
	t.Parallel()
	c := newCluster(t, redisStore)
	w1 := c.startWorker("w1", "--shutdown-timeout", "300ms")
	id := c.enqueue("demo.sleep", `{"seconds":2}`)
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
	c.startWorker("w2")
	if s := c.waitState(id, "succeeded"); s.Attempt != 0 {
		t.Errorf("released task ran at attempt %d, want 0", s.Attempt)
	}
}

// TestUnknownTaskFails: a task no worker knows is recorded failed with a
// clear error, not lost.
func TestUnknownTaskFails(t *testing.T) {
	t.Parallel()
	c := newCluster(t, redisStore)
	c.startWorker("w1")
	id := c.enqueue("no.such.task", `{}`)
	s := c.waitState(id, "failed")
	if s.Error == nil || !strings.Contains(*s.Error, "no.such.task") {
		t.Errorf("status = %+v, want an error naming the task", s)
	}
	if st := c.stats("w1"); st.Failed != 1 || st.Queues["default"] != 0 {
		t.Errorf("stats = %s", mustJSON(st))
	}
}
