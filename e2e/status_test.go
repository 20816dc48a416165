package e2e

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// fleetRow is one element of `stem worker status --json`.
type fleetRow struct {
	ID          string    `json:"id"`
	Host        string    `json:"host"`
	PID         int       `json:"pid"`
	Namespace   string    `json:"namespace"`
	Queues      []string  `json:"queues"`
	Concurrency int       `json:"concurrency"`
	Inflight    int       `json:"inflight"`
	Prefetched  int       `json:"prefetched"`
	StartedAt   time.Time `json:"startedAt"`
	LastSeen    time.Time `json:"lastHeartbeatAt"`
	SinceMs     int64     `json:"lastHeartbeatAgoMs"`
	Late        bool      `json:"late"`
	Version     string    `json:"version"`
}

func (c *cluster) fleet() []fleetRow {
	c.t.Helper()
	var rows []fleetRow
	decodeOne(c.t, c.must("worker", "status", "--json"), &rows)
	return rows
}

// whereDoc is the --json output of `stem task where`.
type whereDoc struct {
	ID      string `json:"id"`
	Holders []struct {
		Worker  string `json:"worker"`
		State   string `json:"state"`
		Attempt int    `json:"attempt"`
	} `json:"holders"`
	State string `json:"state"`
}

// TestWorkerStatus: `worker status` lists the live workers from their
// presence, without a broadcast: the fields a worker announces, its
// running count as of its last heartbeat, and nothing once it stopped.
func TestWorkerStatus(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		r := c.run("worker", "status")
		if r.code != 0 || !strings.Contains(r.stdout, "0 worker(s) live in namespace "+c.ns) {
			t.Fatalf("status of an empty fleet: %s", r)
		}
		if got := c.must("worker", "status", "--json"); strings.TrimSpace(got) != "[]" {
			t.Fatalf("status --json of an empty fleet = %q, want []", got)
		}

		w := c.startWorker("s1", "--concurrency", "2", "--queue", "default", "--queue", "other")
		rows := c.fleet()
		if len(rows) != 1 {
			t.Fatalf("status --json = %s, want one worker", mustJSON(rows))
		}
		host, _ := os.Hostname()
		s := rows[0]
		if s.ID != "s1" || s.Host != host || s.PID != w.cmd.Process.Pid || s.Namespace != c.ns ||
			!slices.Equal(s.Queues, []string{"default", "other"}) || s.Concurrency != 2 || s.Version == "" ||
			s.StartedAt.IsZero() || s.LastSeen.Before(s.StartedAt) || s.SinceMs < 0 {
			t.Errorf("status row = %s", mustJSON(s))
		}
		raw := c.must("worker", "status", "--json")
		var list []json.RawMessage
		decodeOne(t, raw, &list)
		want := []string{"concurrency", "host", "id", "inflight", "lastHeartbeatAgoMs", "lastHeartbeatAt", "late",
			"namespace", "paused", "pid", "prefetched", "queues", "startedAt", "version"}
		if got := keysOf(t, list[0]); !slices.Equal(got, want) {
			t.Errorf("status --json fields = %v, want %v", got, want)
		}

		// The running count comes with the next heartbeat.
		g := newGate(t)
		id := c.enqueue("demo.sleep", g.sleepArgs())
		c.waitState(id, "started")
		deadline := time.Now().Add(waitTimeout)
		for rows = c.fleet(); len(rows) != 1 || rows[0].Inflight != 1; rows = c.fleet() {
			if time.Now().After(deadline) {
				t.Fatalf("status never showed the running task: %s", mustJSON(rows))
			}
			time.Sleep(pollEvery)
		}
		human := c.must("worker", "status")
		for _, s := range []string{"WORKER", "LAST HEARTBEAT", "s1", host, "default,other", "1/2", " ok\n",
			"1 worker(s) live in namespace " + c.ns} {
			if !strings.Contains(human, s) {
				t.Errorf("status does not show %q:\n%s", s, human)
			}
		}
		g.open(t)
		c.waitState(id, "succeeded")

		// A worker that shut down withdrew its presence.
		if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := w.wait(t); code != 0 {
			t.Fatalf("worker exit %d", code)
		}
		if rows := c.fleet(); len(rows) != 0 {
			t.Errorf("status after shutdown = %s, want none", mustJSON(rows))
		}
	})
}

// TestTaskWhereAndInspectScheduled: `task where` names the worker running
// a task, and says why no worker holds one that is scheduled or finished;
// `inspect --scheduled` lists delayed tasks, `--reserved` the prefetched
// ones (a list, empty here: a worker of long tasks prefetches none).
func TestTaskWhereAndInspectScheduled(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		c.startWorker("h1", "--concurrency", "1")
		g := newGate(t)
		running := c.enqueue("demo.sleep", g.sleepArgs())
		later := c.enqueue("demo.echo", "null", "--countdown", "1h")
		c.waitState(running, "started")

		r := c.run("task", "where", running)
		if r.code != 0 || !strings.Contains(r.stdout, "h1") || !strings.Contains(r.stdout, "running") {
			t.Errorf("where of a running task: %s", r)
		}
		var doc whereDoc
		decodeOne(t, c.must("task", "where", running, "--json"), &doc)
		if doc.ID != running || len(doc.Holders) != 1 || doc.Holders[0].Worker != "h1" || doc.Holders[0].State != "running" {
			t.Errorf("where --json of a running task = %s", mustJSON(doc))
		}

		r = c.run("task", "where", later, "--json")
		doc = whereDoc{}
		decodeOne(t, r.stdout, &doc)
		if r.code != 1 || len(doc.Holders) != 0 || doc.State != "pending" || !strings.Contains(r.stderr, "scheduled for") {
			t.Errorf("where of a scheduled task: %s", r)
		}

		rep := only(t, c.replies("worker", "inspect", "--scheduled", "--reserved"), "h1")
		var p stemtype.InspectReply
		decodeOne(t, string(rep.Payload), &p)
		if p.Reserved == nil || len(p.Reserved) != 0 {
			t.Errorf("inspect --reserved = %s, want an empty list", rep.Payload)
		}
		human := c.must("worker", "inspect", "--scheduled")
		if len(p.Scheduled) != 1 || p.ScheduledTotal != 1 || p.Scheduled[0].ID != later ||
			p.Scheduled[0].Task != "demo.echo" || !p.Scheduled[0].NotBefore.After(time.Now().Add(50*time.Minute)) {
			t.Errorf("inspect --scheduled = %s", rep.Payload)
		}
		if !strings.Contains(human, "1 scheduled") || !strings.Contains(human, later) {
			t.Errorf("inspect --scheduled does not list %s:\n%s", later, human)
		}

		g.open(t)
		c.waitState(running, "succeeded")
		r = c.run("task", "where", running)
		if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "ended succeeded") {
			t.Errorf("where of a finished task: %s", r)
		}
		r = c.run("task", "where", running, "--worker", "nobody")
		if r.code != 70 || !strings.Contains(r.stderr, "nobody") {
			t.Errorf("where --worker of a worker that is not live: %s", r)
		}
		r = c.run("task", "where", "")
		if r.code != 64 {
			t.Errorf("where of an empty id: %s", r)
		}
		r = c.run("worker", "inspect", "--scheduled-limit", "5")
		if r.code != 64 || !strings.Contains(r.stderr, "--scheduled") {
			t.Errorf("--scheduled-limit without --scheduled: %s", r)
		}
	})
}
