package stemcli_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStatusOpensOnlyTheResultBackend: `task status` reads the result
// backend alone, so it answers while the broker cannot be reached, and the
// flag --backend wins over STEM_RESULT_BACKEND_URL, which wins over the
// broker's URL.
func TestStatusOpensOnlyTheResultBackend(t *testing.T) {
	e := newCLIEnv(t)
	id := e.enqueue("parked") // recorded pending in memory:// (newCLIEnv's STEM_BROKER_URL)
	e.env = map[string]string{"STEM_BROKER_URL": "redis://127.0.0.1:1/0", "STEM_RESULT_BACKEND_URL": "memory://"}
	if code, out, errOut := e.run("task", "status", id); code != 0 || out != "pending\n" {
		t.Fatalf("status with an unreachable broker: exit %d, stdout %q\nstderr:\n%s", code, out, errOut)
	}
	// The variable names another hub, where the task is unknown ...
	e.env = map[string]string{"STEM_RESULT_BACKEND_URL": "memory://elsewhere"}
	if code, _, errOut := e.run("task", "status", id); code != 1 || !strings.Contains(errOut, "no state recorded in memory://elsewhere") {
		t.Fatalf("status from STEM_RESULT_BACKEND_URL=memory://elsewhere: exit %d\nstderr:\n%s", code, errOut)
	}
	// ... and the flag wins over it.
	if code, out, errOut := e.run("--backend", "memory://", "task", "status", id); code != 0 || out != "pending\n" {
		t.Fatalf("status --backend memory://: exit %d, stdout %q\nstderr:\n%s", code, out, errOut)
	}
	// With neither, the broker's URL serves the results too.
	e.env = map[string]string{"STEM_BROKER_URL": "memory://elsewhere"}
	if code, _, errOut := e.run("task", "status", id); code != 1 || !strings.Contains(errOut, "no state recorded in memory://elsewhere") {
		t.Fatalf("status with STEM_BROKER_URL=memory://elsewhere: exit %d\nstderr:\n%s", code, errOut)
	}
}

// TestRevokeWithoutResultBackend: a result backend that cannot be reached
// does not stop a revoke (the store is written and the revoke published),
// and says so on stderr; with no worker live the exit code is 70.
func TestRevokeWithoutResultBackend(t *testing.T) {
	e := newCLIEnv(t)
	store := filepath.Join(t.TempDir(), "revokes.ndjson")
	const id = "0123456789abcdef0123456789abcdef"
	code, _, errOut := e.run("--backend", "redis://127.0.0.1:1/0", "--revoke-store", "file://"+store,
		"worker", "revoke", "--task", id, "--timeout", "200ms")
	if code != 70 || !strings.Contains(errOut, "stem: note: result backend unavailable, task states not updated: cannot open result backend redis://127.0.0.1:1/0") ||
		!strings.Contains(errOut, "no worker is live") {
		t.Fatalf("revoke with an unreachable result backend: exit %d\nstderr:\n%s", code, errOut)
	}
	b, err := os.ReadFile(store)
	if err != nil || !strings.Contains(string(b), id) {
		t.Fatalf("revoke store %s holds %q (%v), want the revoke of %s", store, b, err, id)
	}
}

// TestOpenFailureExitCodes: a store that cannot be reached exits 69 and one
// whose URL can never work exits 78, for every command, with nothing on
// stdout and the URL's password never shown.
func TestOpenFailureExitCodes(t *testing.T) {
	e := newCLIEnv(t)
	const down = "redis://:hunter2@127.0.0.1:1/0"
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--broker", down, "enqueue", "ok"}, 69, "cannot open broker redis://:xxxxx@127.0.0.1:1/0"},
		{[]string{"--backend", down, "enqueue", "ok"}, 69, "cannot open result backend redis://:xxxxx@127.0.0.1:1/0"},
		{[]string{"--backend", down, "task", "status", "x"}, 69, "cannot open result backend redis://:xxxxx@127.0.0.1:1/0"},
		{[]string{"--broker", down, "worker", "stats"}, 69, "cannot open broker redis://:xxxxx@127.0.0.1:1/0"},
		{[]string{"--revoke-store", down, "worker", "revoke", "--task", "x"}, 69, "cannot open revoke store (from --revoke-store) redis://:xxxxx@127.0.0.1:1/0"},
		{[]string{"--broker", down, "--revoke-store", "file://" + filepath.Join(t.TempDir(), "r"), "worker", "revoke", "--task", "x"}, 69, "cannot open broker redis://:xxxxx@127.0.0.1:1/0"},
		{[]string{"--broker", down, "worker", "start", "--fail-fast"}, 69, "cannot open broker redis://:xxxxx@127.0.0.1:1/0"},
		{[]string{"--broker", down, "bench", "--tasks", "1"}, 69, "cannot open broker redis://:xxxxx@127.0.0.1:1/0"},
		{[]string{"--backend", "ftp://u:hunter2@h", "task", "status", "x"}, 78, `unsupported result backend URL "ftp://u:xxxxx@h"`},
		{[]string{"--revoke-store", "ftp://h", "worker", "start"}, 78, "cannot open revoke store (from --revoke-store) ftp://h"},
		{[]string{"--broker", "memory://%zz", "worker", "ping"}, 78, "cannot open broker"},
	} {
		code, out, errOut := e.run(tc.args...)
		if code != tc.code || out != "" || !strings.Contains(errOut, tc.want) || strings.Contains(errOut, "hunter2") {
			t.Errorf("%q: exit %d, stdout %q, want exit %d and %q\nstderr:\n%s", tc.args, code, out, tc.code, tc.want, errOut)
		}
	}
}
