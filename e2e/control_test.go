package e2e

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
	"github.com/stem-go/stem/stemurl"
)

func workerIDs(reps []stemtype.ControlReply) []string {
	ids := make([]string, 0, len(reps))
	for _, r := range reps {
		ids = append(ids, r.WorkerID)
	}
	slices.Sort(ids)
	return ids
}

// TestPing covers broadcast and targeted pings, a ghost worker and a
// namespace with no worker.
func TestPing(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		c.startWorker("w1")
		c.startWorker("w2")

		reps := c.replies("worker", "ping")
		if got := workerIDs(reps); !slices.Equal(got, []string{"w1", "w2"}) {
			t.Errorf("broadcast ping answered by %v, want [w1 w2]", got)
		}
		for _, r := range reps {
			var p map[string]time.Time
			if err := json.Unmarshal(r.Payload, &p); err != nil || r.Status != "ok" || p["timestamp"].IsZero() {
				t.Errorf("ping reply %s", mustJSON(r))
			}
		}
		only(t, c.replies("worker", "ping", "--worker", "w2"), "w2")

		// Human output names both workers.
		out := c.must("worker", "ping")
		if !strings.Contains(out, "w1") || !strings.Contains(out, "w2") {
			t.Errorf("ping output does not name both workers:\n%s", out)
		}

		r := c.run("worker", "ping", "--worker", "ghost", "--timeout", "300ms")
		if r.code != 70 || !strings.Contains(r.stderr, "ghost") {
			t.Errorf("ping of a ghost worker: want exit 70 naming ghost on stderr, got %s", r)
		}
		// w1 must answer within the timeout, a failure bound generous enough
		// for a loaded machine; the ghost makes the command wait it out.
		r = c.run("worker", "ping", "--worker", "w1", "--worker", "ghost", "--timeout", "3s", "--json")
		if r.code != 70 || !strings.Contains(r.stderr, "ghost") || strings.Contains(r.stderr, "w1") {
			t.Errorf("ping of w1 and a ghost: want exit 70 naming only ghost, got %s", r)
		}
		var partial []stemtype.ControlReply
		decodeOne(t, r.stdout, &partial)
		if got := workerIDs(partial); !slices.Equal(got, []string{"w1"}) {
			t.Errorf("ping of w1 and a ghost: replies from %v, want [w1]", got)
		}

		empty := newCluster(t, store)
		r = empty.run("worker", "ping", "--timeout", "300ms")
		if r.code != 70 || !strings.Contains(r.stderr, "no worker replied") {
			t.Errorf("ping with no worker: want exit 70, got %s", r)
		}
	})
}

// TestInspectActive checks inspect's view of a running task and of the
// revoke set.
func TestInspectActive(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		c.startWorker("w1")
		id := c.enqueue("demo.sleep", `{"seconds":30}`)
		c.waitState(id, "started")

		// The handler reports progress right after it starts; poll until the
		// first checkpoint is visible.
		var task map[string]json.RawMessage
		deadline := time.Now().Add(waitTimeout)
		for task == nil || string(task["lastHeartbeatAt"]) == "" || string(task["progress"]) == "null" {
			if time.Now().After(deadline) {
				t.Fatalf("no checkpoint of %s visible in inspect: %s", id, mustJSON(task))
			}
			rep := only(t, c.replies("worker", "inspect", "--worker", "w1"), "w1")
			var p struct {
				Inflight int                          `json:"inflight"`
				Active   []map[string]json.RawMessage `json:"active"`
			}
			decodeOne(t, string(rep.Payload), &p)
			if p.Inflight != 1 || len(p.Active) != 1 {
				t.Fatalf("inspect: want one task in flight, got %s", rep.Payload)
			}
			task = p.Active[0]
			time.Sleep(pollEvery)
		}
		want := []string{"attempt", "id", "isolated", "lastHeartbeatAt", "progress", "queue", "runtimeMs", "startedAt", "task", "terminating"}
		if got := keysOf(t, []byte(mustJSON(task))); !slices.Equal(got, want) {
			t.Errorf("active task fields = %v, want %v", got, want)
		}
		var a stemtype.ActiveTask
		if err := json.Unmarshal([]byte(mustJSON(task)), &a); err != nil {
			t.Fatal(err)
		}
		if a.ID != id || a.Task != "demo.sleep" || a.Queue != "default" || a.Attempt != 0 || a.Isolated || a.Terminating ||
			a.StartedAt.IsZero() || a.RuntimeMs < 0 || a.Progress == nil || a.LastHeartbeatAt.IsZero() {
			t.Errorf("active task = %s", mustJSON(task))
		}

		// Revoke records are listed only with --include-revoked (DESIGN §4).
		other := randomHex(16)
		c.must("worker", "revoke", "--task", other, "--reason", "inspect me", "--requester", "e2e", "--worker", "w1")
		for _, args := range [][]string{{"--include-revoked"}, {"--include-revoked", "--limit", "0"}} {
			rep := only(t, c.replies(append([]string{"worker", "inspect", "--worker", "w1"}, args...)...), "w1")
			var p stemtype.InspectReply
			decodeOne(t, string(rep.Payload), &p)
			i := slices.IndexFunc(p.Revoked, func(r stemtype.RevokeRecord) bool { return r.TaskID == other })
			if i < 0 {
				t.Fatalf("inspect %v: revoked list lacks %s: %s", args, other, rep.Payload)
			}
			rec := p.Revoked[i]
			if rec.Namespace != c.ns || rec.Reason != "inspect me" || rec.RequestedBy != "e2e" || rec.Terminate ||
				rec.Version <= 0 || rec.IssuedAt.IsZero() || !rec.ExpiresAt.After(rec.IssuedAt) {
				t.Errorf("revoke record = %s", mustJSON(rec))
			}
		}
		for _, args := range [][]string{{}, {"--include-revoked=false"}} {
			rep := only(t, c.replies(append([]string{"worker", "inspect", "--worker", "w1"}, args...)...), "w1")
			var p stemtype.InspectReply
			decodeOne(t, string(rep.Payload), &p)
			if slices.Contains(keysOf(t, rep.Payload), "revoked") || p.RevokedTotal != 1 {
				t.Errorf("inspect %v listed revokes or did not count them: %s", args, rep.Payload)
			}
		}
		out := c.must("worker", "inspect", "--worker", "w1", "--include-revoked")
		if !strings.Contains(out, id) || !strings.Contains(out, other) {
			t.Errorf("human inspect output lacks the task or the revoke:\n%s", out)
		}
	})
}

// TestStats checks the counters after a known workload and queue depths.
func TestStats(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		w := c.startWorker("w1", "--queue", "default", "--queue", "side", "--concurrency", "3", "--prefetch", "2")
		var ids []string
		for i := range 3 {
			ids = append(ids, c.enqueue("demo.echo", `{"i":`+strconv.Itoa(i)+`}`))
		}
		fail := c.enqueue("demo.fail", `null`, "--max-retries", "1")
		// Two tasks wait on queue side for an hour: its depth is 2.
		c.enqueue("demo.echo", `{}`, "--queue", "side", "--countdown", "1h")
		c.enqueue("demo.echo", `{}`, "--queue", "side", "--countdown", "1h")
		for _, id := range ids {
			c.waitState(id, "succeeded")
		}
		if s := c.waitState(fail, "failed"); s.Attempt != 1 || s.Error == nil {
			t.Errorf("demo.fail with --max-retries 1 = %+v, want failed at attempt 1", s)
		}

		rep := only(t, c.replies("worker", "stats", "--worker", "w1"), "w1")
		want := []string{"concurrency", "cancelled", "failed", "host", "inflight", "namespace", "pid", "prefetch", "processed",
			"paused", "queues", "resultsGivenUp", "retried", "stores", "succeeded", "timestamp", "uptimeMs"}
		slices.Sort(want)
		if got := keysOf(t, rep.Payload); !slices.Equal(got, want) {
			t.Errorf("stats fields = %v, want %v", got, want)
		}
		var s stemtype.StatsReply
		decodeOne(t, string(rep.Payload), &s)
		if s.Processed != 4 || s.Succeeded != 3 || s.Failed != 1 || s.Retried != 1 || s.Cancelled != 0 || s.Inflight != 0 {
			t.Errorf("counters = %s, want processed 4, succeeded 3, failed 1, retried 1, cancelled 0, inflight 0", rep.Payload)
		}
		if s.Namespace != c.ns || s.PID != w.cmd.Process.Pid || s.Concurrency != 3 || s.Prefetch != 2 || s.Timestamp.IsZero() {
			t.Errorf("stats identity = %s (want namespace %s, pid %d, concurrency 3, prefetch 2)", rep.Payload, c.ns, w.cmd.Process.Pid)
		}
		if len(s.Queues) != 2 || s.Queues["default"] != 0 || s.Queues["side"] != 2 {
			t.Errorf("queues = %v, want default=0 side=2", s.Queues)
		}
	})
}

// TestNamespaceIsolation checks that two namespaces on one store never see
// each other's workers, revokes or results.
func TestNamespaceIsolation(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		a := newCluster(t, store)
		b := newCluster(t, store)
		a.startWorker("wa")
		b.startWorker("wb")

		if got := workerIDs(b.replies("worker", "ping")); !slices.Equal(got, []string{"wb"}) {
			t.Errorf("ping in B answered by %v, want [wb]", got)
		}
		if got := workerIDs(a.replies("worker", "ping")); !slices.Equal(got, []string{"wa"}) {
			t.Errorf("ping in A answered by %v, want [wa]", got)
		}
		// --namespace on the command line wins over STEM_NAMESPACE.
		if got := workerIDs(b.replies("worker", "ping", "--namespace", a.ns)); !slices.Equal(got, []string{"wa"}) {
			t.Errorf("ping --namespace A from B's environment answered by %v, want [wa]", got)
		}
		if r := b.run("worker", "ping", "--worker", "wa", "--timeout", "300ms"); r.code != 70 {
			t.Errorf("ping of A's worker in B: want exit 70, got %s", r)
		}

		id := a.enqueue("demo.echo", `{"ns":"a"}`, "--countdown", "1s")
		b.must("worker", "revoke", "--task", id, "--worker", "wb", "--reason", "from B")
		if !hasRecord(b.inspect("wb").Revoked, id) {
			t.Errorf("B's worker lacks B's revoke of %s", id)
		}
		if hasRecord(a.inspect("wa").Revoked, id) {
			t.Errorf("A's worker holds B's revoke of %s", id)
		}
		if s := a.waitState(id, "succeeded"); !jsonEqual(t, s.Result, `{"ns":"a"}`) {
			t.Errorf("A's task = %+v", s)
		}
		if r := b.run("task", "status", id); r.code == 0 {
			t.Errorf("B sees A's task state: %s", r)
		}
		if s := a.stats("wa"); s.Succeeded != 1 || s.Cancelled != 0 {
			t.Errorf("A's worker stats: %s", mustJSON(s))
		}
		if s := b.stats("wb"); s.Processed != 0 {
			t.Errorf("B's worker processed A's task: %s", mustJSON(s))
		}
	})
}

// TestMalformedControlMessage publishes bad control messages with the Go
// API and checks that the worker answers them with errors and keeps working.
func TestMalformedControlMessage(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		w := c.startWorker("w1")

		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		ctl, err := stemurl.New().OpenControl(ctx, c.url, stemdriver.Options{Namespace: c.ns})
		if err != nil {
			t.Fatal(err)
		}
		defer ctl.Close()

		// Garbage with no request id can be answered by nobody; it must not
		// hurt the worker.
		for _, junk := range []string{"not json at all", `{"type":"ping"}`, `[1,2,3]`, ""} {
			if err := ctl.Publish(ctx, nil, []byte(junk)); err != nil {
				t.Fatal(err)
			}
		}
		for _, tc := range []struct {
			name, msg, say string
			targets        []string
		}{
			{"bad inspect payload", `{"requestId":"%s","type":"inspect","payload":{"includeRevoked":"yes"}}`, "inspect", nil},
			{"type of the wrong kind", `{"requestId":"%s","type":42}`, "malformed", nil},
			{"unknown type", `{"requestId":"%s","type":"frobnicate","targets":["*"]}`, "frobnicate", []string{"*"}},
			{"no type", `{"requestId":"%s","targets":["w1"]}`, "type", []string{"w1"}},
			{"revoke record without namespace", `{"requestId":"%s","type":"revoke","payload":{"records":[{"taskId":"x","version":1}]}}`, "namespace", nil},
			{"revoke payload not an object", `{"requestId":"%s","type":"revoke","payload":"x"}`, "revoke", nil},
		} {
			reqID := "e2e-" + randomHex(8)
			msg := strings.Replace(tc.msg, "%s", reqID, 1)
			if err := ctl.Publish(ctx, tc.targets, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			var got stemtype.ControlReply
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			err := ctl.Replies(rctx, reqID, func(b []byte) bool {
				if err := json.Unmarshal(b, &got); err != nil {
					t.Errorf("%s: reply is not JSON: %q", tc.name, b)
				}
				return false
			})
			rcancel()
			if err != nil {
				t.Errorf("%s: no reply: %v", tc.name, err)
				continue
			}
			if got.RequestID != reqID || got.WorkerID != "w1" || got.Status != "error" || got.Error == nil ||
				!strings.Contains(got.Error.Message, tc.say) {
				t.Errorf("%s: reply %s, want status error mentioning %q", tc.name, mustJSON(got), tc.say)
			}
		}

		if w.exited() {
			t.Fatal("worker exited after malformed control messages")
		}
		only(t, c.replies("worker", "ping", "--worker", "w1"), "w1")
		id := c.enqueue("demo.echo", `{"still":"working"}`)
		c.waitState(id, "succeeded")
		if !strings.Contains(w.stderr.String(), "malformed control message") {
			t.Errorf("worker did not log the malformed message")
		}
	})
}
