package e2e

import (
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stem-go/stem/stemtype"
)

var taskIDRe = regexp.MustCompile(`^[0-9a-f]{32}$`)

// TestEnqueueAndStatus covers the producer side of the CLI contract:
// enqueue's plain and --json output, task status's plain and --json output,
// and a worker running demo.echo to succeeded.
func TestEnqueueAndStatus(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)

		r := c.run("enqueue", "demo.echo", "--args", `{"a":1}`)
		if r.code != 0 {
			t.Fatalf("enqueue: %s", r)
		}
		id := strings.TrimSuffix(r.stdout, "\n")
		if !taskIDRe.MatchString(id) || r.stdout != id+"\n" {
			t.Fatalf("enqueue printed %q, want a task id and one newline", r.stdout)
		}

		var enq map[string]json.RawMessage
		out := c.must("enqueue", "demo.echo", "--args", `{"b":2}`, "--json")
		decodeOne(t, out, &enq)
		if got, want := keysOf(t, []byte(out)), []string{"id", "queue", "task"}; !slices.Equal(got, want) {
			t.Errorf("enqueue --json fields = %v, want %v", got, want)
		}
		var e struct{ ID, Task, Queue string }
		decodeOne(t, out, &e)
		if !taskIDRe.MatchString(e.ID) || e.ID == id || e.Task != "demo.echo" || e.Queue != "default" {
			t.Errorf("enqueue --json = %s", out)
		}

		if got := c.must("task", "status", id); got != "pending\n" {
			t.Errorf("status before any worker = %q, want %q", got, "pending\n")
		}
		raw := c.must("task", "status", id, "--json")
		want := []string{"attempt", "error", "id", "meta", "progress", "result", "state", "task"}
		if got := keysOf(t, []byte(raw)); !slices.Equal(got, want) {
			t.Errorf("status --json fields = %v, want %v", got, want)
		}
		s := c.status(id)
		if s.ID != id || s.Task != "demo.echo" || s.State != "pending" || s.Attempt != 0 || s.Error != nil {
			t.Errorf("pending status = %+v", s)
		}

		c.startWorker("w1")
		s = c.waitState(id, "succeeded")
		if !jsonEqual(t, s.Result, `{"a":1}`) {
			t.Errorf("result = %s, want {\"a\":1}", s.Result)
		}
		if s.Attempt != 0 || s.Error != nil || s.Task != "demo.echo" || s.ID != id {
			t.Errorf("succeeded status = %+v", s)
		}
		raw = c.must("task", "status", id, "--json")
		if got := keysOf(t, []byte(raw)); !slices.Equal(got, want) {
			t.Errorf("status --json fields after success = %v, want %v", got, want)
		}
		if got := c.must("task", "status", id); got != "succeeded\n" {
			t.Errorf("status = %q, want %q", got, "succeeded\n")
		}
		c.waitState(e.ID, "succeeded")

		// A task that was never enqueued has no state: a clear error, not 0.
		r = c.run("task", "status", strings.Repeat("0", 32))
		if r.code == 0 || r.stdout != "" || !strings.Contains(r.stderr, strings.Repeat("0", 32)) {
			t.Errorf("status of an unknown id: %s", r)
		}
	})
}

func jsonEqual(t *testing.T, got json.RawMessage, want string) bool {
	t.Helper()
	var a, b any
	if err := json.Unmarshal(got, &a); err != nil {
		return false
	}
	if err := json.Unmarshal([]byte(want), &b); err != nil {
		t.Fatal(err)
	}
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// TestUsageErrors checks that usage errors exit 64 before anything is
// opened or sent. They need no service: the environment names none.
func TestUsageErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		say  string // expected on stderr
	}{
		{"unknown flag", []string{"worker", "ping", "--bogus"}, "bogus"},
		{"unknown command", []string{"frobnicate"}, "frobnicate"},
		{"unknown worker command", []string{"worker", "frobnicate"}, "frobnicate"},
		{"unknown task command", []string{"task", "frobnicate"}, "frobnicate"},
		// --timeout keeps a failing case short: it would wait for replies.
		{"ping with an argument", []string{"worker", "ping", "extra", "--timeout", "100ms"}, "extra"},
		{"revoke with an argument", []string{"worker", "revoke", "--task", "a", "b", "--timeout", "100ms"}, `"b"`},
		{"revoke without --task", []string{"worker", "revoke"}, "--task"},
		{"enqueue without task", []string{"enqueue"}, "arg"},
		{"enqueue with two tasks", []string{"enqueue", "demo.echo", "demo.fail"}, "arg"},
		{"enqueue with bad args", []string{"enqueue", "demo.echo", "--args", "{bad"}, "JSON"},
		{"kill-after without terminate", []string{"worker", "revoke", "--task", "x", "--kill-after", "1s"}, "--terminate"},
		{"bad duration", []string{"worker", "ping", "--timeout", "soon"}, "timeout"},
		{"status without id", []string{"task", "status"}, "arg"},
		{"negative timeout", []string{"worker", "ping", "--timeout", "-1s"}, "timeout"},
		// Empty or reserved names: each would otherwise address nothing
		// (an empty id or queue) or everything (the broadcast target "*").
		{"revoke with an empty task id", []string{"worker", "revoke", "--task", ""}, "--task"},
		{"revoke with a blank task id", []string{"worker", "revoke", "--task", "a", "--task", " "}, "--task"},
		{"status with an empty id", []string{"task", "status", ""}, "empty"},
		{"ping with an empty worker id", []string{"worker", "ping", "--worker", ""}, "--worker"},
		{"worker start with an empty queue", []string{"worker", "start", "--queue", ""}, "--queue"},
		{"worker start with the broadcast id", []string{"worker", "start", "--id", "*"}, "--id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runStem(t, environ(), tc.args...)
			if r.code != 64 {
				t.Errorf("want exit 64, got %s", r)
			}
			if r.stdout != "" {
				t.Errorf("usage error printed on stdout: %q", r.stdout)
			}
			if !strings.Contains(r.stderr, tc.say) {
				t.Errorf("stderr does not mention %q: %s", tc.say, r)
			}
		})
	}
}

// TestJSONOutputIsOneDocument checks that --json worker commands print one
// JSON list on stdout and nothing else there, with workers and without.
func TestJSONOutputIsOneDocument(t *testing.T) {
	t.Parallel()
	c := newCluster(t, redisStore)
	c.startWorker("w1")
	for _, args := range [][]string{
		{"worker", "ping"},
		{"worker", "ping", "--worker", "w1"},
		{"worker", "inspect"},
		{"worker", "inspect", "--include-revoked=false", "--worker", "w1"},
		{"worker", "stats"},
		{"worker", "revoke", "--task", "deadbeef", "--worker", "w1"},
	} {
		r := c.run(append(args, "--json")...)
		if r.code != 0 {
			t.Errorf("want exit 0: %s", r)
			continue
		}
		var reps []json.RawMessage
		decodeOne(t, r.stdout, &reps)
		if len(reps) != 1 {
			t.Errorf("%v: want one reply in %s", args, r.stdout)
		}
	}

	// With no worker at all: an empty list, still one document, and 70.
	empty := newCluster(t, redisStore)
	r := empty.run("worker", "ping", "--json", "--timeout", "200ms")
	if r.code != 70 {
		t.Errorf("ping --json with no worker: want exit 70, got %s", r)
	}
	var reps []json.RawMessage
	decodeOne(t, r.stdout, &reps)
	if reps == nil || len(reps) != 0 {
		t.Errorf("ping --json with no worker printed %q, want []", r.stdout)
	}
	r = empty.run("worker", "revoke", "--task", "x", "--json", "--timeout", "200ms")
	if r.code != 70 {
		t.Errorf("revoke --json with no worker: want exit 70, got %s", r)
	}
	reps = nil
	decodeOne(t, r.stdout, &reps)
	if reps == nil || len(reps) != 0 {
		t.Errorf("revoke --json with no worker printed %q, want []", r.stdout)
	}
}

// TestDemo runs the self-contained tour on the embedded default.
func TestDemo(t *testing.T) {
	t.Parallel()
	r := runStem(t, environ(), "demo")
	if r.code != 0 {
		t.Fatalf("stem demo: %s", r)
	}
	for _, w := range []string{"succeeded", "retry", "failed", "cancelled"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("stem demo output does not mention %q:\n%s", w, r.stdout)
		}
	}
}

// TestEnqueueWithID: `enqueue --id` uses the given id (plain and --json);
// enqueueing the same id again is the duplicate publish the conformance
// suite pins: a second message, run again, that cannot replace the first
// recorded outcome, with a note on stderr saying so.
func TestEnqueueWithID(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		id := "order-" + randomHex(4)
		r := c.run("enqueue", "demo.echo", "--args", `{"n":1}`, "--id", id)
		if r.code != 0 || r.stdout != id+"\n" || r.stderr != "" {
			t.Fatalf("enqueue --id: %s", r)
		}
		var e struct{ ID, Task, Queue string }
		id2 := "order-" + randomHex(4)
		out := c.must("enqueue", "demo.echo", "--id", id2, "--json")
		decodeOne(t, out, &e)
		if e.ID != id2 || e.Task != "demo.echo" || e.Queue != "default" {
			t.Errorf("enqueue --id --json = %s", out)
		}
		if got := c.must("task", "status", id); got != "pending\n" {
			t.Errorf("status of %s = %q, want pending", id, got)
		}

		c.startWorker("w1")
		s := c.waitState(id, "succeeded")
		if !jsonEqual(t, s.Result, `{"n":1}`) {
			t.Fatalf("result = %s", s.Result)
		}
		c.waitState(id2, "succeeded")
		c.waitStats("w1", "2 tasks processed", func(s stemtype.StatsReply) bool { return s.Processed >= 2 })

		// The same id again: published and run again, the recorded
		// outcome unchanged.
		r = c.run("enqueue", "demo.echo", "--args", `{"n":2}`, "--id", id)
		if r.code != 0 || r.stdout != id+"\n" {
			t.Fatalf("enqueue of a duplicate id: %s", r)
		}
		if !strings.Contains(r.stderr, "note: task "+id+" already succeeded") {
			t.Errorf("no note on the duplicate id: %s", r)
		}
		c.waitStats("w1", "the duplicate processed", func(s stemtype.StatsReply) bool { return s.Processed >= 3 })
		s = c.status(id)
		if s.State != "succeeded" || !jsonEqual(t, s.Result, `{"n":1}`) {
			t.Errorf("the duplicate's run replaced the recorded outcome: %+v", s)
		}

		for _, bad := range []string{"", " ", "a b", "a\tb"} {
			r := c.run("enqueue", "demo.echo", "--id", bad)
			if r.code != 64 || r.stdout != "" || !strings.Contains(r.stderr, "--id") {
				t.Errorf("enqueue --id %q: want exit 64 naming --id, got %s", bad, r)
			}
		}
	})
}
