package stemcli_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// TestBlankConnectionFlagsAreUsageErrors: a connection or namespace flag
// given with an empty or blank value (a script's `--broker "$UNSET"`) is a
// usage error (64), as a blank --worker, --task or --queue is. Taken for
// "not given", it would send the command elsewhere without a word: to the
// variable's store, to the in-process default (an enqueue that exits 0 and
// loses its task), or to the default namespace (another deployment).
func TestBlankConnectionFlagsAreUsageErrors(t *testing.T) {
	e := newCLIEnv(t)
	for _, flag := range []string{"--broker", "--backend", "--revoke-store", "--namespace"} {
		for _, value := range []string{"", "  "} {
			for _, cmd := range [][]string{
				{"enqueue", "ok"},
				{"task", "status", "abc"},
				{"worker", "ping", "--timeout", "100ms"},
				{"worker", "revoke", "--task", "abc", "--timeout", "100ms"},
				// A --concurrency the worker refuses: the blank flag must
				// be refused first, and an unrefused one cannot hang the
				// test in a running worker.
				{"worker", "start", "--concurrency", "0"},
			} {
				args := append([]string{flag, value}, cmd...)
				code, out, errOut := e.run(args...)
				if code != 64 || out != "" || !strings.Contains(errOut, flag) {
					t.Errorf("%q: exit %d, stdout %q, want exit 64, nothing on stdout and %s named\nstderr:\n%s", args, code, out, flag, errOut)
				}
			}
		}
	}
	// Nothing reached the default hub: no task was enqueued there.
	n, err := e.resolver.Hub("").Broker(stemdriver.Options{Namespace: stemtype.DefaultNamespace}).Depth(context.Background(), stemtype.DefaultQueue)
	if err != nil || n != 0 {
		t.Errorf("the default hub's queue %s holds %d task(s) (%v), want none", stemtype.DefaultQueue, n, err)
	}
}

// TestBlankNamespaceVariableIsAConfigError: STEM_NAMESPACE set to blanks
// names no deployment; it is a configuration error (78), not a namespace
// of spaces that no other command of the fleet would find.
func TestBlankNamespaceVariableIsAConfigError(t *testing.T) {
	e := newCLIEnv(t)
	e.env = map[string]string{"STEM_NAMESPACE": "  ", "STEM_BROKER_URL": "memory://"}
	for _, args := range [][]string{
		{"enqueue", "ok"},
		{"worker", "ping", "--timeout", "100ms"},
	} {
		code, out, errOut := e.run(args...)
		if code != 78 || out != "" || !strings.Contains(errOut, "STEM_NAMESPACE") {
			t.Errorf("%q: exit %d, stdout %q, want exit 78 naming STEM_NAMESPACE\nstderr:\n%s", args, code, out, errOut)
		}
	}
	// A flag wins over the variable, blank or not.
	if code, _, errOut := e.run("--namespace", "ns1", "enqueue", "ok"); code != 0 {
		t.Errorf("--namespace ns1 beside a blank STEM_NAMESPACE: exit %d\nstderr:\n%s", code, errOut)
	}
}

// TestRevokeRefusesAResultBackendURLThatCanNeverWork: revoke does without
// a result backend it cannot reach, but one whose URL can never work (an
// unknown scheme, an unknown option) is a configuration error, exit 78,
// before anything is stored or published, as for every other command and
// for the workers, which refuse to start with it.
func TestRevokeRefusesAResultBackendURLThatCanNeverWork(t *testing.T) {
	e := newCLIEnv(t)
	for _, backend := range []string{"ftp://u:hunter2@h", "postgres://127.0.0.1:1/stem?search_path=a,b", "memory://%zz"} {
		store := filepath.Join(t.TempDir(), "revokes.ndjson")
		const id = "0123456789abcdef0123456789abcdef"
		code, out, errOut := e.run("--backend", backend, "--revoke-store", "file://"+store,
			"worker", "revoke", "--task", id, "--timeout", "100ms")
		if code != 78 || out != "" || !strings.Contains(errOut, "result backend") || strings.Contains(errOut, "hunter2") {
			t.Errorf("revoke --backend %s: exit %d, stdout %q, want exit 78 naming the result backend\nstderr:\n%s", backend, code, out, errOut)
		}
		if b, err := os.ReadFile(store); err == nil && strings.Contains(string(b), id) {
			t.Errorf("revoke --backend %s: the store holds the revoke of %s, want nothing stored:\n%s", backend, id, b)
		}
	}
	// A file:// URL as the result backend's, which the revoke store falls
	// back to, serves revokes alone: the revoke goes through (no worker
	// is live: exit 70) and says that task states are not updated.
	store := filepath.Join(t.TempDir(), "revokes.ndjson")
	code, _, errOut := e.run("--backend", "file://"+store, "worker", "revoke", "--task", "abc", "--timeout", "100ms")
	if code != 70 || !strings.Contains(errOut, "task states not updated") {
		t.Errorf("revoke --backend file://: exit %d, want 70 and a note\nstderr:\n%s", code, errOut)
	}
	if b, err := os.ReadFile(store); err != nil || !strings.Contains(string(b), `"abc"`) {
		t.Errorf("revoke --backend file://: the store holds %q (%v), want the revoke of abc", b, err)
	}
}

// TestCommandsLeaveNothingOpen: every command closes what it opened, on
// success and on each failure path (a store that cannot be reached, a
// result backend the revoke does without, a URL that can never work): no
// goroutine of a Redis client or a subscription outlives the command.
func TestCommandsLeaveNothingOpen(t *testing.T) {
	real := testutil.NeedRedis(t)
	ns := "atk-leak-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	testutil.CleanupNamespace(t, real, ns)
	e := newCLIEnv(t)
	e.env = map[string]string{"STEM_BROKER_URL": real, "STEM_NAMESPACE": ns}
	const dead = "redis://127.0.0.1:1/0"
	store := "file://" + filepath.Join(t.TempDir(), "revokes.ndjson")
	before := goleak.IgnoreCurrent()
	id := e.enqueue("parked")
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"task", "status", id}, 0},
		{[]string{"worker", "ping", "--timeout", "100ms"}, 70},
		{[]string{"worker", "stats", "--worker", "nobody", "--timeout", "100ms"}, 70},
		{[]string{"worker", "revoke", "--task", id, "--timeout", "100ms"}, 70},
		{[]string{"--backend", dead, "--revoke-store", store, "worker", "revoke", "--task", id, "--timeout", "100ms"}, 70},
		{[]string{"--revoke-store", dead, "worker", "revoke", "--task", id}, 69},
		{[]string{"--backend", dead, "enqueue", "ok"}, 69},
		{[]string{"--revoke-store", "redis://127.0.0.1:6379/0?bogus=1", "worker", "start"}, 78},
		{[]string{"--revoke-store", dead, "worker", "start", "--fail-fast"}, 69},
	} {
		if code, _, errOut := e.run(tc.args...); code != tc.code {
			t.Errorf("%q: exit %d, want %d\nstderr:\n%s", tc.args, code, tc.code, errOut)
		}
	}
	goleak.VerifyNone(t, before)
}

// TestStatusOfACorruptRecordIsNoOutage: a stored result that does not
// decode (written by hand, or by something that is not stem) is no store
// that cannot be reached: exit 1, not 69, since a script that retries on
// 69 would retry for ever. The message says what is wrong.
func TestStatusOfACorruptRecordIsNoOutage(t *testing.T) {
	real := testutil.NeedRedis(t)
	ns := "atk-corrupt-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	testutil.CleanupNamespace(t, real, ns)
	opts, err := redis.ParseURL(real)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	ctx := context.Background()
	for key, value := range map[string]string{
		"stem:" + ns + ":result:garbled": "not json{",
		"stem:" + ns + ":state:mistyped": `{"id":"mistyped","state":42}`,
	} {
		if err := rdb.Set(ctx, key, value, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
	}
	e := newCLIEnv(t)
	e.env = map[string]string{"STEM_BROKER_URL": real, "STEM_NAMESPACE": ns}
	for _, args := range [][]string{
		{"task", "status", "garbled"},
		{"task", "status", "--json", "garbled"},
		{"task", "status", "mistyped"},
	} {
		code, out, errOut := e.run(args...)
		if code != 1 || out != "" || !strings.Contains(errOut, "does not decode") {
			t.Errorf("%q: exit %d, stdout %q, want exit 1, nothing on stdout and the reason\nstderr:\n%s", args, code, out, errOut)
		}
	}
}

// TestEnqueueRefusesABlankQueue: `worker start --queue "  "` is refused,
// so no worker ever consumes a blank queue; enqueueing into one (or, with
// --queue "", silently into the task's default queue) is a usage error
// too, and nothing is enqueued.
func TestEnqueueRefusesABlankQueue(t *testing.T) {
	e := newCLIEnv(t)
	for _, q := range []string{"", "   "} {
		code, out, errOut := e.run("enqueue", "ok", "--queue", q)
		if code != 64 || out != "" || !strings.Contains(errOut, "--queue") {
			t.Errorf("enqueue --queue %q: exit %d, stdout %q, want exit 64 naming --queue\nstderr:\n%s", q, code, out, errOut)
		}
	}
	b := e.resolver.Hub("").Broker(stemdriver.Options{Namespace: stemtype.DefaultNamespace})
	for _, q := range []string{"   ", stemtype.DefaultQueue} {
		if n, err := b.Depth(context.Background(), q); err != nil || n != 0 {
			t.Errorf("queue %q holds %d task(s) (%v), want none", q, n, err)
		}
	}
}
