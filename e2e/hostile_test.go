package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stem-go/stem/internal/testutil"
)

// TestHostileConfigExitCodes drives the binary with configuration a
// hostile or careless operator gives it: a blank connection or namespace
// flag (a script's --broker "$UNSET") is a usage error, not a silent
// fall-back to another store, the in-process default or the default
// namespace; a blank STEM_NAMESPACE, a revoke store path that is a
// directory or a device, and a result backend URL that can never work
// beside a revoke are configuration errors. Nothing reaches stdout, and
// a refused revoke stores nothing.
func TestHostileConfigExitCodes(t *testing.T) {
	t.Parallel()
	real := testutil.NeedRedis(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "revokes.ndjson")
	revoke := []string{"worker", "revoke", "--task", "hostile-id", "--timeout", "100ms"}
	// After every subtest (they run in parallel, after this function).
	t.Cleanup(func() {
		if b, err := os.ReadFile(store); err == nil && strings.Contains(string(b), "hostile-id") {
			t.Errorf("a refused revoke was stored:\n%s", b)
		}
	})
	for _, tc := range []struct {
		name string
		vars map[string]string
		args []string
		code int
		say  string
	}{
		{"empty --broker beside STEM_BROKER_URL", map[string]string{"STEM_BROKER_URL": real}, []string{"--broker", "", "enqueue", "demo.echo"}, 64, "--broker"},
		{"empty --broker, nothing set", nil, []string{"--broker", "", "enqueue", "demo.echo"}, 64, "--broker"},
		{"blank --backend", map[string]string{"STEM_BROKER_URL": real}, []string{"--backend", " ", "task", "status", "x"}, 64, "--backend"},
		{"empty --revoke-store", map[string]string{"STEM_BROKER_URL": real}, append([]string{"--revoke-store", ""}, revoke...), 64, "--revoke-store"},
		{"empty --namespace", map[string]string{"STEM_BROKER_URL": real}, []string{"--namespace", "", "worker", "ping", "--timeout", "100ms"}, 64, "--namespace"},
		{"empty --broker: worker start", map[string]string{"STEM_BROKER_URL": real}, []string{"--broker", "", "worker", "start"}, 64, "--broker"},
		{"blank STEM_NAMESPACE", map[string]string{"STEM_BROKER_URL": real, "STEM_NAMESPACE": "   "}, []string{"enqueue", "demo.echo"}, 78, "STEM_NAMESPACE"},
		{"revoke store is a directory", map[string]string{"STEM_BROKER_URL": real, "STEM_REVOKE_STORE_URL": "file://" + dir}, revoke, 78, "not a regular file"},
		{"revoke store is a device: worker start", map[string]string{"STEM_BROKER_URL": real, "STEM_REVOKE_STORE_URL": os.DevNull}, []string{"worker", "start"}, 78, "not a regular file"},
		{"revoke beside a result backend URL that can never work", map[string]string{"STEM_BROKER_URL": real, "STEM_REVOKE_STORE_URL": "file://" + store,
			"STEM_RESULT_BACKEND_URL": "ftp://admin:" + plantedPasswords[1] + "@127.0.0.1/"}, revoke, 78, "result backend"},
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
			if r.code != tc.code || r.stdout != "" || !strings.Contains(r.stderr, tc.say) {
				t.Errorf("want exit %d, nothing on stdout and %q on stderr, got %s", tc.code, tc.say, r)
			}
			if f := leaked(r.stdout+r.stderr, plantedPasswords[1]); f != "" {
				t.Errorf("output shows %q of a password: %s", f, r)
			}
		})
	}
}
