package e2e

import (
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemtype"
	"github.com/stem-go/stem/stemurl"
)

// TestExitCodes checks each exit code of DESIGN §5 through the binary:
// configuration errors exit 78 (a retry cannot help), usage errors 64, a
// service that cannot be reached 69.
func TestExitCodes(t *testing.T) {
	t.Parallel()
	real := testutil.NeedRedis(t)
	missingDir := "file://" + tmpDir + "/no-such-dir/revokes.ndjson"
	ping := []string{"worker", "ping", "--timeout", "100ms"}
	revoke := []string{"worker", "revoke", "--task", "t1", "--timeout", "100ms"}
	for _, tc := range []struct {
		name string
		vars map[string]string
		args []string
		code int
		say  []string // on stderr
	}{
		{"unknown scheme", map[string]string{"STEM_BROKER_URL": "amqp://guest@127.0.0.1:1/"}, []string{"enqueue", "demo.echo"}, 78, []string{"amqp://", "scheme"}},
		{"sqlite unknown URL option", map[string]string{"STEM_BROKER_URL": "sqlite://" + tmpDir + "/opt.db?bogus=1"}, ping, 78, []string{"bogus"}},
		{"sqlite file in a missing directory", map[string]string{"STEM_BROKER_URL": "sqlite://" + tmpDir + "/no-such-dir/stem.db"}, ping, 69, []string{"no-such-dir"}},
		{"postgres unreachable", map[string]string{"STEM_RESULT_BACKEND_URL": "postgres://u:s3cr3t@127.0.0.1:1/stem?connect_timeout=2"}, []string{"task", "status", "abc"}, 69, []string{"postgres", "127.0.0.1:1"}},
		{"postgres revoke store with a schema list", map[string]string{"STEM_BROKER_URL": real, "STEM_REVOKE_STORE_URL": "postgresql://127.0.0.1:1/stem?search_path=a,b"}, revoke, 78, []string{"postgresql", "STEM_REVOKE_STORE_URL", "schema"}},
		{"malformed URL", map[string]string{"STEM_BROKER_URL": "redis://u:pa%zz@127.0.0.1:1/0"}, []string{"enqueue", "demo.echo"}, 78, []string{"invalid URL"}},
		{"unknown URL option", map[string]string{"STEM_BROKER_URL": "redis://127.0.0.1:1/0?bogus=1"}, ping, 78, []string{"bogus"}},
		{"bad database number", map[string]string{"STEM_BROKER_URL": "redis://127.0.0.1:1/abc"}, []string{"enqueue", "demo.echo"}, 78, []string{"database"}},
		{"negative database number", map[string]string{"STEM_BROKER_URL": "redis://127.0.0.1:1/-1"}, ping, 78, []string{"database"}},
		{"database the server refuses", map[string]string{"STEM_BROKER_URL": withDB(t, real, "100000")}, ping, 78, []string{"database 100000"}},
		{"port out of range", map[string]string{"STEM_BROKER_URL": "redis://127.0.0.1:99999/0"}, ping, 78, []string{"port 99999"}},
		{"file URL with a query", map[string]string{"STEM_BROKER_URL": real, "STEM_REVOKE_STORE_URL": "file:///tmp/r.ndjson?x=1"}, revoke, 78, []string{"query"}},
		{"bad --broker flag", nil, append([]string{"--broker", "ftp://127.0.0.1/"}, ping...), 78, []string{"ftp://"}},
		{"worker start with an unknown scheme", map[string]string{"STEM_BROKER_URL": "kafka://127.0.0.1:1"}, []string{"worker", "start"}, 78, []string{"kafka://"}},
		{"worker start with a bad revoke store option", map[string]string{"STEM_BROKER_URL": real, "STEM_REVOKE_STORE_URL": "redis://127.0.0.1:1/0?bogus=1"}, []string{"worker", "start"}, 78, []string{"bogus"}},
		{"memory revoke store beside Redis: revoke", map[string]string{"STEM_BROKER_URL": real, "STEM_REVOKE_STORE_URL": "memory://"}, revoke, 78, []string{"memory://", "STEM_REVOKE_STORE_URL", "durable"}},
		{"memory revoke store beside a dead Redis: revoke", map[string]string{"STEM_BROKER_URL": deadRedis, "STEM_REVOKE_STORE_URL": "memory://"}, revoke, 78, []string{"durable"}},
		{"memory results beside Redis: revoke", map[string]string{"STEM_BROKER_URL": real, "STEM_RESULT_BACKEND_URL": "memory://"}, revoke, 78, []string{"STEM_RESULT_BACKEND_URL", "durable"}},
		{"--revoke-store memory beside Redis", map[string]string{"STEM_BROKER_URL": real}, append([]string{"--revoke-store", "memory://x"}, revoke...), 78, []string{"--revoke-store", "durable"}},
		{"memory revoke store beside Redis: worker start", map[string]string{"STEM_BROKER_URL": real, "STEM_REVOKE_STORE_URL": "memory://"}, []string{"worker", "start"}, 78, []string{"STEM_REVOKE_STORE_URL", "durable"}},
		{"unknown log level", map[string]string{"STEM_LOG_LEVEL": "verbose"}, []string{"enqueue", "demo.echo"}, 78, []string{"STEM_LOG_LEVEL", `"verbose"`, "debug, info, warn, error"}},
		{"unknown log level: worker start", map[string]string{"STEM_LOG_LEVEL": "loud", "STEM_BROKER_URL": real}, []string{"worker", "start"}, 78, []string{"STEM_LOG_LEVEL", "debug, info, warn, error"}},
		{"bad default revoke expiry", map[string]string{"STEM_BROKER_URL": real, "STEM_REVOKE_DEFAULT_EXPIRY": "soon"}, revoke, 78, []string{"STEM_REVOKE_DEFAULT_EXPIRY"}},
		{"empty task name", nil, []string{"enqueue", ""}, 64, []string{"task name"}},
		{"unreachable broker", map[string]string{"STEM_BROKER_URL": deadRedis}, ping, 69, []string{"127.0.0.1:1"}},
		{"unreachable revoke store", map[string]string{"STEM_BROKER_URL": real, "STEM_REVOKE_STORE_URL": deadRedis}, revoke, 69, []string{"127.0.0.1:1"}},
		{"missing revoke directory", map[string]string{"STEM_BROKER_URL": real, "STEM_REVOKE_STORE_URL": missingDir}, []string{"worker", "start", "--fail-fast"}, 69, []string{"no-such-dir"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := "e2e-" + randomHex(6)
			testutil.CleanupNamespace(t, real, ns)
			vars := map[string]string{"STEM_NAMESPACE": ns}
			for k, v := range tc.vars {
				vars[k] = v
			}
			r := runStem(t, environ(vars), tc.args...)
			if r.code != tc.code {
				t.Errorf("want exit %d, got %s", tc.code, r)
			}
			for _, s := range tc.say {
				if !strings.Contains(r.stderr, s) {
					t.Errorf("stderr does not mention %q: %s", s, r)
				}
			}
			if r.stdout != "" {
				t.Errorf("stdout = %q, want nothing", r.stdout)
			}
		})
	}
}

// withDB returns the Redis URL u with database db.
func withDB(t *testing.T, u, db string) string {
	t.Helper()
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	pu.Path = "/" + db
	return pu.String()
}

// TestLogLevels: every documented level is accepted, in any case.
func TestLogLevels(t *testing.T) {
	t.Parallel()
	for _, level := range []string{"debug", "INFO", "Warn", "error", ""} {
		r := runStem(t, environ(map[string]string{"STEM_LOG_LEVEL": level}), "enqueue", "demo.echo")
		if r.code != 0 {
			t.Errorf("STEM_LOG_LEVEL=%q: %s", level, r)
		}
	}
}

// TestNonDurableRevokeStoreIsRefused: with a Redis broker, a memory://
// revoke store would publish revokes that no store holds, which a live
// worker would apply and a later one never see. The CLI refuses it before
// publishing anything, and a worker refuses to start on it.
func TestNonDurableRevokeStoreIsRefused(t *testing.T) {
	t.Parallel()
	c := newCluster(t, redisStore)
	c.startWorker("w1")
	id := c.enqueue("demo.echo", `{"a":1}`, "--countdown", "1s")
	r := c.runEnv(map[string]string{"STEM_REVOKE_STORE_URL": "memory://"}, "worker", "revoke", "--task", id, "--worker", "w1")
	if r.code != 78 || r.stdout != "" || strings.Contains(r.stderr, "honour") {
		t.Fatalf("revoke with a memory:// store beside Redis: want exit 78 and nothing stored or published, got %s", r)
	}
	var reps []stemtype.ControlReply
	decodeOne(t, c.must("worker", "inspect", "--worker", "w1", "--include-revoked=true", "--json"), &reps)
	var p stemtype.InspectReply
	decodeOne(t, string(only(t, reps, "w1").Payload), &p)
	if hasRecord(p.Revoked, id) {
		t.Errorf("the worker got a revoke of %s that no store holds", id)
	}
	c.waitState(id, "succeeded")

	w := c.spawnWorker(map[string]string{"STEM_REVOKE_STORE_URL": "memory://"}, "w2")
	if code := w.wait(t); code != 78 || !strings.Contains(w.stderr.String(), "durable") {
		t.Errorf("worker start with a memory:// revoke store beside Redis: exit %d, want 78 saying why:\n%s", code, w.stderr)
	}
}

// TestWorkerReportsItsStores: a worker logs its resolved stores at start
// and reports them in stats (JSON and human), redacted, and the CLI notes
// when it resolved other stores than the worker.
func TestWorkerReportsItsStores(t *testing.T) {
	t.Parallel()
	c := newCluster(t, redisStore)
	broker, secret := withPassword(t, c.redis)
	c.vars["STEM_BROKER_URL"] = broker
	file := "file://" + t.TempDir() + "/revokes.ndjson"
	c.vars["STEM_REVOKE_STORE_URL"] = file
	shown := stemurl.Redact(broker)
	if leaked(shown, secret) != "" || !strings.Contains(shown, "xxxxx@") {
		t.Fatalf("Redact(%s) = %s", broker, shown)
	}
	w := c.startWorker("w1")
	want := stemtype.StoreInfo{Broker: shown, Results: shown, Revokes: file, Control: shown}

	st := c.stats("w1")
	if st.Stores == nil || *st.Stores != want {
		t.Errorf("stats stores = %s, want %s", mustJSON(st.Stores), mustJSON(want))
	}
	var reps []stemtype.ControlReply
	raw := c.must("worker", "stats", "--json")
	decodeOne(t, raw, &reps)
	var payload map[string]json.RawMessage
	decodeOne(t, string(only(t, reps, "w1").Payload), &payload)
	if got := keysOf(t, payload["stores"]); !slices.Equal(got, []string{"broker", "control", "results", "revokes"}) {
		t.Errorf("stats --json stores fields = %v, want broker, control, results, revokes: %s", got, raw)
	}
	out := c.must("worker", "stats")
	for _, s := range []string{shown, file} {
		if !strings.Contains(out, s) {
			t.Errorf("stats output does not show %s:\n%s", s, out)
		}
	}
	log := w.stderr.String()
	if !strings.Contains(log, "worker started") || !strings.Contains(log, shown) || !strings.Contains(log, file) {
		t.Errorf("the worker's start log does not name its stores:\n%s", log)
	}

	// A CLI that resolved another revoke store is told so.
	other := "file://" + t.TempDir() + "/other.ndjson"
	r := c.runEnv(map[string]string{"STEM_REVOKE_STORE_URL": other}, "worker", "stats")
	if r.code != 0 || !strings.Contains(r.stderr, other) || !strings.Contains(r.stderr, file) {
		t.Errorf("stats from a CLI with another revoke store: want a note naming both, got %s", r)
	}
	if r := c.run("worker", "stats"); strings.Contains(r.stderr, "note") {
		t.Errorf("stats from a CLI with the same stores notes a difference: %s", r)
	}

	for _, s := range []string{log, out, raw, r.stderr} {
		if p := leaked(s, secret); p != "" {
			t.Errorf("output shows %q of the password:\n%s", p, s)
		}
	}
}
