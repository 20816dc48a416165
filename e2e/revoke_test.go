package e2e

import (
	"encoding/json"
	"github.com/stem-go/stem/internal/testutil"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// checkRevokedMeta checks the metadata a revoked task carries.
func checkRevokedMeta(t *testing.T, s taskStatus, reason, by string) {
	t.Helper()
	at, err := time.Parse(time.RFC3339Nano, s.Meta["revokedAt"])
	if s.Meta["revokedReason"] != reason || s.Meta["revokedBy"] != by || err != nil || at.IsZero() {
		t.Errorf("meta of cancelled task = %v, want revokedReason %q, revokedBy %q and a revokedAt time", s.Meta, reason, by)
	}
}

// revokePayload is a revoke reply's payload as `stem worker revoke --json`
// prints it: the worker's reply plus the controller's "unknown" ids.
type revokePayload struct {
	stemtype.RevokeReply
	Unknown []string `json:"unknown"`
}

// revokeReply decodes the one reply of a `revoke --json` run.
func revokeReply(t *testing.T, r result, workerID string) stemtype.RevokeReply {
	t.Helper()
	var reps []stemtype.ControlReply
	decodeOne(t, r.stdout, &reps)
	rep := only(t, reps, workerID)
	var p stemtype.RevokeReply
	decodeOne(t, string(rep.Payload), &p)
	return p
}

// TestRevokeQueued revokes a task that waits in the queue: its status
// shows cancelled at once, and the worker acknowledges it as cancelled
// without running it. The task waits behind a task that holds the worker's
// only slot until the test opens its gate, so it is still queued when the
// revoke arrives however loaded the machine is.
func TestRevokeQueued(t *testing.T) {
	t.Parallel()
	storeKinds(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		c.startWorker("w1", "--concurrency", "1")
		g := newGate(t)
		blocker := c.enqueue("demo.sleep", g.sleepArgs())
		c.waitState(blocker, "started")
		id := c.enqueue("demo.echo", `{"a":1}`)
		r := c.run("worker", "revoke", "--task", id, "--reason", "not needed", "--requester", "e2e", "--worker", "w1", "--json")
		if r.code != 0 {
			t.Fatalf("revoke: %s", r)
		}
		if p := revokeReply(t, r, "w1"); !slices.Equal(p.Tasks, []string{id}) || len(p.Inflight) != 0 {
			t.Errorf("revoke reply = %s, want tasks [%s] and nothing in flight", mustJSON(p), id)
		}
		s := c.status(id)
		if s.State != "cancelled" {
			t.Errorf("status right after the revoke = %+v, want cancelled", s)
		}
		checkRevokedMeta(t, s, "not needed", "e2e")
		if store == fileStore && !hasRecord(fileRecords(t, sharedRevokeFile, c.ns), id) {
			t.Errorf("revoke of %s not in %s", id, sharedRevokeFile)
		}

		// Once the slot is free, the worker meets the task and
		// acknowledges it cancelled.
		g.open(t)
		c.waitState(blocker, "succeeded")
		st := c.waitStats("w1", "cancelled task", func(s stemtype.StatsReply) bool { return s.Cancelled == 1 && s.Processed == 2 })
		if st.Succeeded != 1 || st.Failed != 0 || st.Retried != 0 {
			t.Errorf("stats = %s, want the blocker succeeded and the revoked task cancelled", mustJSON(st))
		}
		s = c.status(id)
		if s.State != "cancelled" || string(s.Result) != "null" || s.Attempt != 0 {
			t.Errorf("final status = %+v, want cancelled without a result", s)
		}
		checkRevokedMeta(t, s, "not needed", "e2e")
		c.waitStats("w1", "an empty queue", func(s stemtype.StatsReply) bool { return s.Queues["default"] == 0 })
	})
}

// TestTerminateRunning revokes a running inline task with --terminate: it
// stops at its next heartbeat, ends cancelled and is not retried.
func TestTerminateRunning(t *testing.T) {
	t.Parallel()
	storeKinds(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		c.startWorker("w1", "--revoke-sync", "200ms")
		id := c.enqueue("demo.sleep", `{"seconds":30,"heartbeat":0.05}`, "--max-retries", "3")
		c.waitState(id, "started")

		r := c.run("worker", "revoke", "--terminate", "--task", id, "--reason", "stop", "--worker", "w1", "--json")
		if r.code != 0 {
			t.Fatalf("revoke --terminate: %s", r)
		}
		// The worker's 200ms re-sync from the store may terminate the task
		// before the control message arrives; then it is no longer in flight
		// when the command is applied.
		if p := revokeReply(t, r, "w1"); !slices.Equal(p.Tasks, []string{id}) || (len(p.Inflight) > 0 && !slices.Equal(p.Inflight, []string{id})) {
			t.Errorf("revoke reply = %s, want %s applied (and in flight unless the re-sync won)", mustJSON(p), id)
		}
		s := c.waitState(id, "cancelled")
		if s.Attempt != 0 || s.Error == nil {
			t.Errorf("cancelled status = %+v, want attempt 0 and an error", s)
		}
		checkRevokedMeta(t, s, "stop", "stem-cli")

		// The retry decision is counted before the outcome is written, so
		// once the task reads cancelled, retried is final for this attempt.
		st := c.waitStats("w1", "cancelled task", func(s stemtype.StatsReply) bool { return s.Cancelled == 1 })
		if st.Retried != 0 || st.Failed != 0 || st.Succeeded != 0 || st.Processed != 1 || st.Inflight != 0 {
			t.Errorf("stats = %s, want one task cancelled and no retry", mustJSON(st))
		}
		if st.Queues["default"] != 0 {
			t.Errorf("a copy of the task waits in the queue: %v", st.Queues)
		}
		// Across revoke re-syncs (every 200ms) nothing changes: wait for
		// several, by the worker's own uptime, then look again.
		c.waitStats("w1", "revoke re-syncs", func(s stemtype.StatsReply) bool { return s.UptimeMs > st.UptimeMs+1000 })
		if s2 := c.status(id); s2.State != "cancelled" || s2.Attempt != 0 {
			t.Errorf("status after re-syncs = %+v, want still cancelled at attempt 0", s2)
		}
		if st2 := c.stats("w1"); st2.Processed != 1 || st2.Retried != 0 || st2.Queues["default"] != 0 {
			t.Errorf("stats after re-syncs = %s", mustJSON(st2))
		}
		if p := c.inspect("w1"); p.Inflight != 0 || !hasRecord(p.Revoked, id) {
			t.Errorf("inspect after cancel = %s", mustJSON(p))
		}
	})
}

// TestRevokeWhileWorkerDown stores a revoke while no worker runs: the CLI
// exits 70, and a worker that starts later honours the revoke.
func TestRevokeWhileWorkerDown(t *testing.T) {
	t.Parallel()
	storeKinds(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		id := c.enqueue("demo.echo", `{"a":1}`)
		r := c.run("worker", "revoke", "--task", id, "--reason", "offline", "--timeout", "300ms")
		if r.code != 70 {
			t.Fatalf("revoke with no worker: want exit 70, got %s", r)
		}
		if !strings.Contains(r.stdout, "revoke stored") || !strings.Contains(r.stderr, "no worker replied") {
			t.Errorf("revoke with no worker did not say the record is stored: %s", r)
		}
		if store == fileStore && !hasRecord(fileRecords(t, sharedRevokeFile, c.ns), id) {
			t.Errorf("revoke of %s not in %s", id, sharedRevokeFile)
		}
		if s := c.status(id); s.State != "cancelled" {
			t.Errorf("status after the revoke = %+v, want cancelled", s)
		}

		c.startWorker("w1")
		if !hasRecord(c.inspect("w1").Revoked, id) {
			t.Errorf("worker did not load the revoke of %s at start-up", id)
		}
		st := c.waitStats("w1", "cancelled task", func(s stemtype.StatsReply) bool { return s.Cancelled == 1 })
		if st.Processed != 1 || st.Succeeded != 0 {
			t.Errorf("stats = %s, want the task cancelled, not run", mustJSON(st))
		}
		s := c.status(id)
		if s.State != "cancelled" || string(s.Result) != "null" {
			t.Errorf("final status = %+v, want cancelled without a result", s)
		}
		checkRevokedMeta(t, s, "offline", "stem-cli")
	})
}

// TestExpiredRevokeNotHonoured: a revoke that expired before the worker met
// the task does not stop it.
func TestExpiredRevokeNotHonoured(t *testing.T) {
	t.Parallel()
	c := newCluster(t, redisStore)
	id := c.enqueue("demo.echo", `{"a":1}`)
	r := c.run("worker", "revoke", "--task", id, "--expires-in", "1ms", "--timeout", "300ms")
	if r.code != 70 {
		t.Fatalf("revoke with no worker: want exit 70, got %s", r)
	}
	// The revoke expired at least 300ms ago (the reply timeout).
	c.startWorker("w1")
	s := c.waitStatus(id, "state succeeded", func(s taskStatus) bool { return s.State == "succeeded" })
	if !jsonEqual(t, s.Result, `{"a":1}`) {
		t.Errorf("status = %+v", s)
	}
	if st := c.stats("w1"); st.Succeeded != 1 || st.Cancelled != 0 {
		t.Errorf("stats = %s", mustJSON(st))
	}
	if hasRecord(c.inspect("w1").Revoked, id) {
		t.Errorf("worker holds an expired revoke of %s", id)
	}
}

// TestCancelledIsFinal: a task whose status reads cancelled never runs
// afterwards. The CLI marks a queued task cancelled when it stores the
// revoke; if the revoke expires before a worker meets the task, the worker
// runs it (TestExpiredRevokeNotHonoured) and the task leaves the final state
// cancelled for started and succeeded: whoever read "cancelled" (a client's
// Wait, an operator) was told something false.
func TestCancelledIsFinal(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		id := c.enqueue("demo.echo", `{"a":1}`)
		r := c.run("worker", "revoke", "--task", id, "--expires-in", "1ms", "--timeout", "200ms")
		if r.code != 70 {
			t.Fatalf("revoke with no worker: want exit 70, got %s", r)
		}
		before := c.status(id)
		c.startWorker("w1")
		c.waitStats("w1", "the task processed", func(s stemtype.StatsReply) bool { return s.Processed == 1 })
		after := c.status(id)
		if before.State == "cancelled" && after.State != "cancelled" {
			t.Errorf("task read %q after a revoke that expired in 1ms, then ran to %q: a final state was left", before.State, after.State)
		}
	})
}

// TestRevokeStoreUnreachable: when the revoke store cannot be written, the
// CLI exits 69, says why, and publishes nothing. The tasks wait behind one
// that holds the worker's only slot until the test opens its gate, so they
// are still queued while the test looks.
func TestRevokeStoreUnreachable(t *testing.T) {
	t.Parallel()
	c := newCluster(t, redisStore)
	c.startWorker("w1", "--concurrency", "1")
	g := newGate(t)
	blocker := c.enqueue("demo.sleep", g.sleepArgs())
	c.waitState(blocker, "started")
	var ids []string
	for _, tc := range []struct {
		name, store string
		say         []string
	}{
		{"redis", deadRedis, []string{"revoke store", "STEM_REVOKE_STORE_URL", "127.0.0.1:1"}},
		{"redis with a password", "redis://admin:s3cr3t-pw@127.0.0.1:1/0", []string{"revoke store", "xxxxx"}},
		{"file in a missing directory", "file://" + filepath.Join(tmpDir, "no-such-dir", "revokes.ndjson"), []string{"revoke store", "no-such-dir", "does not exist"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := c.with(t)
			id := c.enqueue("demo.echo", `{"a":1}`)
			ids = append(ids, id)
			r := c.runEnv(map[string]string{"STEM_REVOKE_STORE_URL": tc.store}, "worker", "revoke", "--task", id, "--worker", "w1")
			if r.code != 69 {
				t.Fatalf("want exit 69, got %s", r)
			}
			for _, s := range tc.say {
				if !strings.Contains(r.stderr, s) {
					t.Errorf("stderr does not mention %q: %s", s, r)
				}
			}
			if strings.Contains(r.stderr, "s3cr3t-pw") {
				t.Errorf("stderr prints the password: %s", r)
			}
			if r.stdout != "" {
				t.Errorf("stdout = %q, want nothing", r.stdout)
			}
			if s := c.status(id); s.State != "pending" {
				t.Errorf("status after a failed revoke = %+v, want pending", s)
			}
			if hasRecord(c.inspect("w1").Revoked, id) {
				t.Errorf("the worker got a revoke of %s that has no durable record", id)
			}
		})
	}
	g.open(t)
	for _, id := range ids {
		c.waitState(id, "succeeded")
	}
	st := c.waitStats("w1", "every task processed", func(s stemtype.StatsReply) bool { return s.Processed == int64(1+len(ids)) })
	if st.Cancelled != 0 || st.Succeeded != int64(1+len(ids)) {
		t.Errorf("stats = %s, want %d succeeded, none cancelled", mustJSON(st), 1+len(ids))
	}
	if _, err := os.Stat(filepath.Join(tmpDir, "no-such-dir")); err == nil {
		t.Errorf("the CLI created the missing directory")
	}
}

// TestRevokeStoreResolution checks STEM_REVOKE_STORE_URL, then
// STEM_RESULT_BACKEND_URL, then STEM_BROKER_URL, through the binary. With
// no worker running, a revoke exits 70 once the record is stored and 69 when
// the store it resolved to cannot be opened.
func TestRevokeStoreResolution(t *testing.T) {
	t.Parallel()
	real := testutil.NeedRedis(t)
	for _, tc := range []struct {
		name                    string
		broker, revoke, results string // unset, or a value; "FILE" is the test's file, "REAL" (or "") the test Redis
		flags                   []string
		wantCode                int
		wantFile                bool
		wantStderrSource        string
	}{
		{name: "revoke store wins over results", revoke: "FILE", results: deadRedis, wantCode: 70, wantFile: true},
		{name: "dead revoke store wins over a good results URL", revoke: deadRedis, results: "FILE", wantCode: 69, wantStderrSource: "STEM_REVOKE_STORE_URL"},
		{name: "results URL used without a revoke store URL", revoke: unset, results: "FILE", wantCode: 70, wantFile: true},
		{name: "empty revoke store URL counts as unset", revoke: "", results: "FILE", wantCode: 70, wantFile: true},
		{name: "dead results URL wins over the broker", revoke: unset, results: deadRedis, wantCode: 69, wantStderrSource: "STEM_RESULT_BACKEND_URL"},
		{name: "broker used last", revoke: unset, results: unset, wantCode: 70},
		{name: "--broker flag used last", broker: unset, revoke: unset, results: unset, flags: []string{"--broker", "REAL"}, wantCode: 70},
		{name: "--broker flag loses to the results URL", broker: unset, revoke: unset, results: deadRedis, flags: []string{"--broker", "REAL"}, wantCode: 69, wantStderrSource: "STEM_RESULT_BACKEND_URL"},
		{name: "--backend flag wins over the broker", revoke: unset, results: unset, flags: []string{"--backend", "FILE"}, wantCode: 70, wantFile: true},
		{name: "--backend flag loses to the revoke store URL", revoke: deadRedis, results: unset, flags: []string{"--backend", "FILE"}, wantCode: 69, wantStderrSource: "STEM_REVOKE_STORE_URL"},
		{name: "--revoke-store wins over the environment", revoke: deadRedis, results: deadRedis, flags: []string{"--revoke-store", "FILE"}, wantCode: 70, wantFile: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newCluster(t, redisStore)
			file := filepath.Join(t.TempDir(), "revokes.ndjson")
			sub := func(v string) string {
				switch v {
				case "FILE":
					return "file://" + file
				case "REAL":
					return real
				}
				return v
			}
			broker := sub(tc.broker)
			if broker == "" {
				broker = real
			}
			vars := map[string]string{"STEM_BROKER_URL": broker, "STEM_REVOKE_STORE_URL": sub(tc.revoke), "STEM_RESULT_BACKEND_URL": sub(tc.results)}
			args := []string{"worker", "revoke", "--task", "t-" + randomHex(8), "--timeout", "200ms"}
			for _, f := range tc.flags {
				args = append(args, sub(f))
			}
			r := c.runEnv(vars, args...)
			if r.code != tc.wantCode {
				t.Fatalf("want exit %d, got %s", tc.wantCode, r)
			}
			if got := len(fileRecords(t, file, c.ns)) == 1; got != tc.wantFile {
				t.Errorf("record in the file: %v, want %v (%s)", got, tc.wantFile, r)
			}
			if tc.wantStderrSource != "" && !strings.Contains(r.stderr, tc.wantStderrSource) {
				t.Errorf("stderr does not name %s: %s", tc.wantStderrSource, r)
			}
			if tc.wantCode == 70 && !tc.wantFile {
				// Stored in the broker's Redis: a worker on that Redis
				// alone loads it.
				c.startWorker("w1")
				if recs := c.inspect("w1").Revoked; len(recs) != 1 {
					t.Errorf("worker on the broker's Redis holds %s, want the one record", mustJSON(recs))
				}
			}
		})
	}

	// Workers resolve the same way: a record stored in one place is seen
	// only by workers whose resolution leads there.
	t.Run("worker", func(t *testing.T) {
		t.Parallel()
		other := otherDB(t, real)
		file := "file://" + filepath.Join(t.TempDir(), "revokes.ndjson")
		c := newCluster(t, redisStore)
		testutil.CleanupNamespace(t, other, c.ns)
		inFile, inOther := "f-"+randomHex(8), "o-"+randomHex(8)
		for _, seed := range []struct{ store, task string }{{file, inFile}, {other, inOther}} {
			r := c.runEnv(map[string]string{"STEM_REVOKE_STORE_URL": seed.store}, "worker", "revoke", "--task", seed.task, "--timeout", "200ms")
			if r.code != 70 {
				t.Fatalf("seed revoke in %s: want exit 70, got %s", seed.store, r)
			}
		}
		for _, tc := range []struct {
			name string
			vars map[string]string
			want []string
		}{
			{"STEM_REVOKE_STORE_URL", map[string]string{"STEM_REVOKE_STORE_URL": file, "STEM_RESULT_BACKEND_URL": other}, []string{inFile}},
			{"STEM_RESULT_BACKEND_URL", map[string]string{"STEM_RESULT_BACKEND_URL": other}, []string{inOther}},
			{"STEM_BROKER_URL", map[string]string{}, []string{}},
		} {
			id := "w-" + strings.ToLower(strings.ReplaceAll(tc.name, "_", "-"))
			w := c.spawnWorker(tc.vars, id)
			// The CLI reaches the worker through the broker whatever the
			// worker's store is.
			c.waitReady(w)
			var got []string
			for _, r := range c.inspect(id).Revoked {
				got = append(got, r.TaskID)
			}
			if got == nil {
				got = []string{}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("worker resolving through %s holds revokes %v, want %v", tc.name, got, tc.want)
			}
		}
	})
}

// TestRevokeRecordFields checks a line of the file store against the revoke
// record of DESIGN.md §4: its JSON field names and RFC 3339 UTC times.
func TestRevokeRecordFields(t *testing.T) {
	t.Parallel()
	c := newCluster(t, fileStore)
	id := "r-" + randomHex(8)
	r := c.run("worker", "revoke", "--task", id, "--reason", "fields", "--requester", "e2e", "--timeout", "200ms")
	if r.code != 70 {
		t.Fatalf("want exit 70, got %s", r)
	}
	data, err := os.ReadFile(sharedRevokeFile)
	if err != nil {
		t.Fatal(err)
	}
	var line []byte
	for l := range strings.Lines(string(data)) {
		if strings.Contains(l, id) && strings.Contains(l, c.ns) {
			line = []byte(l)
		}
	}
	if line == nil {
		t.Fatalf("no line for %s in %s", id, sharedRevokeFile)
	}
	want := []string{"expiresAt", "issuedAt", "namespace", "reason", "requestedBy", "taskId", "terminate", "version"}
	if got := keysOf(t, line); !slices.Equal(got, want) {
		t.Errorf("revoke record fields = %v, want %v", got, want)
	}
	var rec map[string]any
	_ = json.Unmarshal(line, &rec)
	for _, k := range []string{"issuedAt", "expiresAt"} {
		s, _ := rec[k].(string)
		if ts, err := time.Parse(time.RFC3339Nano, s); err != nil || !strings.HasSuffix(s, "Z") || ts.Location() != time.UTC {
			t.Errorf("%s = %q, want an RFC 3339 time in UTC", k, s)
		}
	}
}

// TestResyncHonoursMissedRevoke: a worker that missed the control message
// (the revoke was addressed to another worker) still honours the stored
// revoke after its next re-sync, for a queued task and for a running one.
// Neither can end on its own before the test is done with it.
func TestResyncHonoursMissedRevoke(t *testing.T) {
	t.Parallel()
	storeKinds(t, testResyncHonoursMissedRevoke)
}

func testResyncHonoursMissedRevoke(t *testing.T, store storeKind) {
	c := newCluster(t, store)
	// One slot: the queued task waits behind the running one, which runs
	// until the re-sync terminates it. Its revoke is stored first, so the
	// re-sync that frees the slot has brought both.
	c.startWorker("w1", "--revoke-sync", "200ms", "--concurrency", "1")
	running := c.enqueue("demo.sleep", `{"seconds":600,"heartbeat":0.05}`)
	c.waitState(running, "started")
	queued := c.enqueue("demo.echo", `{"a":1}`)

	for _, args := range [][]string{{"--task", queued}, {"--terminate", "--task", running}} {
		r := c.run(append([]string{"worker", "revoke", "--worker", "elsewhere", "--timeout", "200ms", "--reason", "missed"}, args...)...)
		if r.code != 70 || !strings.Contains(r.stderr, "elsewhere") {
			t.Fatalf("revoke addressed to a missing worker: want exit 70, got %s", r)
		}
	}
	s := c.waitState(running, "cancelled")
	checkRevokedMeta(t, s, "missed", "stem-cli")
	st := c.waitStats("w1", "two cancelled tasks", func(s stemtype.StatsReply) bool { return s.Cancelled == 2 })
	if st.Succeeded != 0 || st.Retried != 0 || st.Processed != 2 {
		t.Errorf("stats = %s, want both tasks cancelled, none run to the end", mustJSON(st))
	}
	checkRevokedMeta(t, c.status(queued), "missed", "stem-cli")
}

// TestRevokeRunningWithoutTerminate: a running task revoked without
// --terminate finishes; its state is not overwritten by the revoke. The
// task runs until the test opens its gate, after the revoke.
func TestRevokeRunningWithoutTerminate(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		c.startWorker("w1")
		g := newGate(t)
		id := c.enqueue("demo.sleep", g.sleepArgs())
		c.waitState(id, "started")
		r := c.run("worker", "revoke", "--task", id, "--worker", "w1", "--json")
		if r.code != 0 {
			t.Fatalf("revoke: %s", r)
		}
		if p := revokeReply(t, r, "w1"); !slices.Equal(p.Tasks, []string{id}) || len(p.Inflight) != 0 {
			t.Errorf("revoke without --terminate: reply %s, want the task applied and not signalled", mustJSON(p))
		}
		if s := c.status(id); s.State != "started" || len(s.Meta) != 0 {
			t.Errorf("status of the running task right after the revoke = %+v, want started, not revoked", s)
		}
		g.open(t)
		if s := c.waitState(id, "succeeded"); len(s.Meta) != 0 {
			t.Errorf("the running task finished with revoke metadata: %+v", s)
		}

		// A finished task keeps its outcome when revoked afterwards.
		c.must("worker", "revoke", "--task", id, "--worker", "w1")
		if s := c.status(id); s.State != "succeeded" || len(s.Meta) != 0 {
			t.Errorf("status of a finished task after a revoke = %+v, want succeeded untouched", s)
		}
	})
}

// TestRevokeSeveralTasks: one call revokes several tasks, every record
// proposing the call's time as its version (no +i for the i-th task,
// DESIGN.md §2.3); the store keeps it, since none of the tasks had one.
func TestRevokeSeveralTasks(t *testing.T) {
	t.Parallel()
	c := newCluster(t, fileStore)
	ids := []string{"m-" + randomHex(8), "m-" + randomHex(8), "m-" + randomHex(8)}
	r := c.run("worker", "revoke", "--task", ids[0], "--task", ids[1], "--task", ids[2], "--timeout", "200ms")
	if r.code != 70 {
		t.Fatalf("want exit 70, got %s", r)
	}
	recs := fileRecords(t, sharedRevokeFile, c.ns)
	if len(recs) != 3 {
		t.Fatalf("file holds %d records of the namespace, want 3: %s", len(recs), mustJSON(recs))
	}
	byID := map[string]stemtype.RevokeRecord{}
	for _, rec := range recs {
		byID[rec.TaskID] = rec
	}
	for i, id := range ids {
		rec, ok := byID[id]
		if !ok || rec.Version != byID[ids[0]].Version || rec.Version != rec.IssuedAt.UnixMicro() || !rec.IssuedAt.Equal(byID[ids[0]].IssuedAt) {
			t.Errorf("record %d = %s, want the call's time as version and issuedAt", i, mustJSON(rec))
		}
	}
}

// TestCorruptRevokeFileLine: a corrupt line in the revoke file is reported
// with its line number and the records around it still load.
func TestCorruptRevokeFileLine(t *testing.T) {
	t.Parallel()
	c := newCluster(t, redisStore)
	path := filepath.Join(t.TempDir(), "revokes.ndjson")
	now := time.Now().UTC()
	rec := func(task string, version int64) string {
		b, err := json.Marshal(stemtype.RevokeRecord{Namespace: c.ns, TaskID: task, Version: version, IssuedAt: now,
			RequestedBy: "hand", ExpiresAt: now.Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		return string(b) + "\n"
	}
	data := rec("before", now.UnixMicro()) + "{this is not json\n" + rec("after", now.UnixMicro()+1)
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	w := c.spawnWorker(map[string]string{"STEM_REVOKE_STORE_URL": "file://" + path}, "w1")
	c.waitReady(w)
	var got []string
	for _, r := range c.inspect("w1").Revoked {
		got = append(got, r.TaskID)
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"after", "before"}) {
		t.Errorf("worker loaded revokes %v, want [after before]", got)
	}
	log := w.stderr.String()
	if !strings.Contains(log, "corrupt") || !strings.Contains(log, "line=2") {
		t.Errorf("worker log does not report the corrupt line 2:\n%s", log)
	}
	// The CLI can still write through to the same file.
	id := c.enqueue("demo.echo", `{}`)
	if r := c.runEnv(map[string]string{"STEM_REVOKE_STORE_URL": "file://" + path}, "worker", "revoke", "--task", id, "--worker", "w1"); r.code != 0 {
		t.Errorf("revoke into a file with a corrupt line: %s", r)
	}
	if !hasRecord(c.inspect("w1").Revoked, id) {
		t.Errorf("revoke written to a file with a corrupt line did not reach the worker")
	}
}

// TestUnreachableServices: every command that needs the broker or the
// revoke store exits 69 when it cannot be reached, and never prints the
// password of the URL.
func TestUnreachableServices(t *testing.T) {
	t.Parallel()
	const dead = "redis://admin:s3cr3t-pw@127.0.0.1:1/0"
	missingDir := "file://" + filepath.Join(tmpDir, "no-such-dir", "revokes.ndjson")
	real := testutil.NeedRedis(t)
	for _, tc := range []struct {
		name string
		vars map[string]string
		args []string
	}{
		{"enqueue", map[string]string{"STEM_BROKER_URL": dead}, []string{"enqueue", "demo.echo"}},
		{"status", map[string]string{"STEM_BROKER_URL": dead}, []string{"task", "status", "abc"}},
		{"ping", map[string]string{"STEM_BROKER_URL": dead}, []string{"worker", "ping", "--timeout", "100ms"}},
		{"inspect", map[string]string{"STEM_BROKER_URL": dead}, []string{"worker", "inspect", "--timeout", "100ms"}},
		{"stats", map[string]string{"STEM_BROKER_URL": dead}, []string{"worker", "stats", "--timeout", "100ms"}},
		{"revoke with a dead broker", map[string]string{"STEM_BROKER_URL": dead}, []string{"worker", "revoke", "--task", "x", "--timeout", "100ms"}},
		{"revoke with a good store and a dead broker", map[string]string{"STEM_BROKER_URL": dead, "STEM_REVOKE_STORE_URL": "file://" + filepath.Join(t.TempDir(), "r.ndjson")}, []string{"worker", "revoke", "--task", "x", "--timeout", "100ms"}},
		{"worker start with a dead broker", map[string]string{"STEM_BROKER_URL": dead}, []string{"worker", "start", "--fail-fast"}},
		{"worker start with a dead revoke store", map[string]string{"STEM_BROKER_URL": real, "STEM_REVOKE_STORE_URL": dead}, []string{"worker", "start", "--fail-fast"}},
		{"worker start with a missing revoke directory", map[string]string{"STEM_BROKER_URL": real, "STEM_REVOKE_STORE_URL": missingDir}, []string{"worker", "start", "--fail-fast"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			vars := map[string]string{"STEM_NAMESPACE": "e2e-" + randomHex(6)}
			for k, v := range tc.vars {
				vars[k] = v
			}
			r := runStem(t, environ(vars), tc.args...)
			if r.code != 69 {
				t.Errorf("want exit 69, got %s", r)
			}
			if strings.Contains(r.stderr+r.stdout, "s3cr3t-pw") {
				t.Errorf("output prints the password: %s", r)
			}
			if r.stderr == "" {
				t.Errorf("nothing on stderr says why")
			}
		})
	}
}

// TestRevokeRepeatedID: an id given twice is revoked once: one record,
// one line in the table, "1 task(s)", not a count that names more tasks
// than were meant.
func TestRevokeRepeatedID(t *testing.T) {
	t.Parallel()
	c := newCluster(t, fileStore)
	id := "r-" + randomHex(8)
	r := c.run("worker", "revoke", "--task", id, "--task", id, "--timeout", "200ms")
	if r.code != 70 {
		t.Fatalf("want exit 70 (no worker), got %s", r)
	}
	if !strings.Contains(r.stdout, "1 task(s)") || strings.Count(r.stdout, id) != 1 {
		t.Errorf("want the id revoked and listed once: %s", r)
	}
	if recs := fileRecords(t, sharedRevokeFile, c.ns); len(recs) != 1 {
		t.Errorf("file holds %d records of the namespace, want 1: %s", len(recs), mustJSON(recs))
	}
}
