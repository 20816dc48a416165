package stemfile

import (
	"path/filepath"
	"testing"

	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
)

// TestSystem runs the system suite with the file revoke store: a memory
// Hub carries the broker, the results and the control plane, and one
// revoke file holds every namespace of the run, so the revoke cases
// (stored, synced, enforced, marked) go through the file. The scope
// isolation case gets a second hub and a second file.
func TestSystem(t *testing.T) {
	dir := t.TempDir()
	hub, elsewhere := stemmem.New(), stemmem.New()
	open := func(hub *stemmem.Hub, path string) func(*testing.T, string) systemtest.Roles {
		return func(t *testing.T, namespace string) systemtest.Roles {
			opts := stemdriver.Options{Namespace: namespace}
			rs, err := OpenRevokes(path, opts)
			if err != nil {
				t.Fatalf("OpenRevokes: %v", err)
			}
			r := systemtest.Roles{Broker: hub.Broker(opts), Results: hub.Results(opts),
				Revokes: rs, Control: hub.Control(opts)}
			t.Cleanup(func() {
				_ = r.Broker.Close()
				_ = r.Results.Close()
				_ = r.Revokes.Close()
				_ = r.Control.Close()
			})
			return r
		}
	}
	systemtest.Run(t, systemtest.Harness{
		Open:          open(hub, filepath.Join(dir, "revokes.ndjson")),
		OpenElsewhere: open(elsewhere, filepath.Join(dir, "elsewhere.ndjson")),
	})
}
