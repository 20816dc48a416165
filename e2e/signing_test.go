package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
	"github.com/stem-go/stem/stemurl"
)

// newSigningKey returns a random key as `openssl rand -base64 32` makes
// one.
func newSigningKey() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// waitReadyWith polls `stem worker ping --worker ID` with vars until the
// worker answers.
func (c *cluster) waitReadyWith(w *worker, vars map[string]string) {
	c.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		r := c.runEnv(vars, "worker", "ping", "--worker", w.id, "--timeout", "500ms")
		if r.code == 0 {
			return
		}
		if w.exited() {
			c.t.Fatalf("worker %s exited before answering a ping:\n%s", w.id, w.stderr)
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("worker %s did not answer a ping within %s; last: %s", w.id, waitTimeout, r)
		}
		time.Sleep(pollEvery)
	}
}

// waitLogCount waits until the worker's output holds s n times or more.
func (w *worker) waitLogCount(t *testing.T, s string, n int) string {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		out := w.stderr.String()
		if strings.Count(out, s) >= n {
			return out
		}
		if w.exited() || time.Now().After(deadline) {
			t.Fatalf("worker %s: %q %d times, want %d:\n%s", w.id, s, strings.Count(out, s), n, out)
		}
		time.Sleep(pollEvery)
	}
}

// TestSigning runs a worker with STEM_SIGNING_KEY through the binary: a
// CLI without the key is refused with "signature invalid" (ping, and
// revoke --terminate, whose task keeps running), its task is
// dead-lettered, and the unsigned revoke records in the store (the
// refused CLI's, and one written straight into the store) never reach the
// running task through the re-sync; with the key, revoke --terminate
// cancels it. The key never appears in any output.
func TestSigning(t *testing.T) {
	t.Parallel()
	storeKinds(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		key := newSigningKey()
		keyed := map[string]string{"STEM_SIGNING_KEY": key}
		var outputs []string
		run := func(vars map[string]string, args ...string) result {
			t.Helper()
			r := c.runEnv(vars, args...)
			outputs = append(outputs, r.stdout, r.stderr)
			return r
		}
		w := c.spawnWorker(keyed, "w1", "--revoke-sync", "200ms")
		c.waitReadyWith(w, keyed)

		// Without the key, a ping is refused.
		if r := run(nil, "worker", "ping", "--worker", "w1"); r.code != 70 || !strings.Contains(r.stderr, "signature invalid") {
			t.Fatalf("ping without the key: %s, want exit 70 and signature invalid", r)
		}

		g := newGate(t)
		r := run(keyed, "enqueue", "demo.sleep", "--args", g.sleepArgs())
		if r.code != 0 {
			t.Fatalf("signed enqueue: %s", r)
		}
		id := strings.TrimSpace(r.stdout)
		c.waitState(id, "started")

		// Without the key, revoke --terminate gets an error reply and
		// terminates nothing.
		r = run(nil, "worker", "revoke", "--task", id, "--terminate", "--worker", "w1", "--requester", "mallory")
		if r.code != 70 || !strings.Contains(r.stderr, "worker w1 replied with an error: signature invalid") {
			t.Fatalf("revoke without the key: %s, want exit 70 and the worker's signature invalid error", r)
		}
		// An unsigned record written straight into the store, revoking
		// every demo.sleep task.
		revokeURL := c.url
		if u := c.vars["STEM_REVOKE_STORE_URL"]; u != "" {
			revokeURL = u
		}
		ctx := context.Background()
		rs, err := stemurl.New().OpenRevokes(ctx, revokeURL, stemdriver.Options{Namespace: c.ns})
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now().UTC()
		_, err = rs.Upsert(ctx, stemtype.RevokeRecord{Namespace: c.ns, TaskID: stemtype.NameRevokeKey("demo.sleep"),
			Kind: stemtype.RevokeKindName, Name: "demo.sleep", Version: now.UnixMicro(), IssuedAt: now, Terminate: true,
			RequestedBy: "mallory", ExpiresAt: now.Add(time.Hour)})
		if cerr := rs.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatal(err)
		}
		// Both unsigned records reach the worker by its re-sync, which
		// ignores them, says so once each, and goes on.
		log := w.waitLogCount(t, "source=store", 2)
		for _, want := range []string{"task_id=" + id, `task_id="name demo.sleep"`} {
			if !strings.Contains(log, want) {
				t.Errorf("worker log does not report the unsigned record of %s:\n%s", want, log)
			}
		}
		ins := c.inspectWith(keyed, "w1")
		if ins.Inflight != 1 || ins.Active[0].ID != id || ins.Active[0].Terminating || ins.RevokedTotal != 0 {
			t.Fatalf("inspect after the unsigned revokes: %s, want the task running, not terminating, no revoke held", mustJSON(ins))
		}
		if s := c.status(id); s.State != "started" {
			t.Fatalf("task after the unsigned revokes: %+v, want started", s)
		}

		// Without the key, a task is dead-lettered: it never runs.
		r = run(nil, "enqueue", "demo.echo", "--args", `{"a":1}`)
		if r.code != 0 {
			t.Fatalf("unsigned enqueue: %s", r)
		}
		unsigned := strings.TrimSpace(r.stdout)
		w.waitLog(t, "dead-lettering task: signature invalid")
		if s := c.status(unsigned); s.State != "pending" {
			t.Errorf("unsigned task: %+v, want pending (never run)", s)
		}

		// With the key, revoke --terminate works.
		r = run(keyed, "worker", "revoke", "--task", id, "--terminate", "--worker", "w1", "--reason", "signed", "--requester", "ops")
		if r.code != 0 {
			t.Fatalf("signed revoke: %s", r)
		}
		checkRevokedMeta(t, c.waitState(id, "cancelled"), "signed", "ops")

		// Refused: two commands, two records, one task.
		r = run(keyed, "worker", "stats", "--worker", "w1", "--json")
		if r.code != 0 || !strings.Contains(r.stdout, `"signatureRejected": 5`) {
			t.Errorf("stats: %s, want signatureRejected 5", r)
		}
		outputs = append(outputs, run(keyed, "--help").stdout, w.stderr.String())
		for _, out := range outputs {
			if strings.Contains(out, key) {
				t.Fatalf("the key appears in an output:\n%s", out)
			}
		}
	})
}

// inspectWith returns the worker's inspect reply, asked with vars.
func (c *cluster) inspectWith(vars map[string]string, workerID string) stemtype.InspectReply {
	c.t.Helper()
	r := c.runEnv(vars, "worker", "inspect", "--worker", workerID, "--json")
	if r.code != 0 {
		c.t.Fatalf("inspect: %s", r)
	}
	var reps []stemtype.ControlReply
	decodeOne(c.t, r.stdout, &reps)
	rep := only(c.t, reps, workerID)
	var p stemtype.InspectReply
	decodeOne(c.t, string(rep.Payload), &p)
	return p
}

// A signing key that is too short or too uniform, an empty item, a key
// file with a bad line, or both variables set, is a configuration error
// (exit 78) that names the problem and never the key.
func TestSigningKeyConfig(t *testing.T) {
	t.Parallel()
	good := newSigningKey()
	dir := t.TempDir()
	badFile := filepath.Join(dir, "keys")
	if err := os.WriteFile(badFile, []byte(good+"\nshort-secret-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		vars   map[string]string
		want   string
		secret string
	}{
		{"short", map[string]string{"STEM_SIGNING_KEY": "hunter2hunter2"}, "want at least 32", "hunter2hunter2"},
		{"uniform", map[string]string{"STEM_SIGNING_KEY": strings.Repeat("abc", 12)}, "distinct bytes", strings.Repeat("abc", 12)},
		{"weak second", map[string]string{"STEM_SIGNING_KEY": good + ",short-secret-value"}, "key 2 of 2", "short-secret-value"},
		{"empty item", map[string]string{"STEM_SIGNING_KEY": good + ","}, "is empty", good},
		{"both", map[string]string{"STEM_SIGNING_KEY": good, "STEM_SIGNING_KEY_FILE": badFile}, "both set", good},
		{"file", map[string]string{"STEM_SIGNING_KEY_FILE": badFile}, "line 2", "short-secret-value"},
		{"missing file", map[string]string{"STEM_SIGNING_KEY_FILE": filepath.Join(dir, "none")}, "no such file", ""},
	} {
		r := runStem(t, environ(map[string]string{"STEM_BROKER_URL": deadRedis}, tc.vars), "worker", "ping")
		if r.code != 78 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: %s, want exit 78 and %q", tc.name, r, tc.want)
		}
		if tc.secret != "" && (strings.Contains(r.stderr, tc.secret) || strings.Contains(r.stdout, tc.secret)) {
			t.Errorf("%s: the key appears in the output: %s", tc.name, r)
		}
	}
}
