package stemfile

import (
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemdriver/stemdrivertest"
)

// TestConformance runs the driver suite's revoke store tests, the only
// role stemfile provides, on one file for the whole suite: its subtests use
// namespaces of their own, every handle opened on the file shares its data,
// and t.TempDir removes it.
func TestConformance(t *testing.T) {
	path := filepath.Join(t.TempDir(), "revokes.ndjson")
	stemdrivertest.Run(t, stemdrivertest.Harness{Revokes: func(t *testing.T, _ string) stemdriver.RevokeStore {
		logs := newLogRecorder()
		rs, err := OpenRevokes(path, stemdriver.Options{Logger: logs.logger()})
		if err != nil {
			t.Fatalf("OpenRevokes: %v", err)
		}
		t.Cleanup(func() {
			rs.Close()
			// The suite writes only good records: any warning is a bug.
			for _, e := range logs.entries() {
				if e.level >= slog.LevelWarn {
					t.Errorf("unexpected log: %s %v", e.msg, e.attrs)
				}
			}
		})
		return rs
	}})
}
