package stemfile

import (
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemdriver/stemdrivertest"
)

func TestRevokesConformance(t *testing.T) {
	// One file for the whole suite: its subtests use namespaces of their
	// own, and every handle opened on the file shares its data.
	path := filepath.Join(t.TempDir(), "revokes.ndjson")
	stemdrivertest.RunRevokes(t, func(t *testing.T) stemdriver.RevokeStore {
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
	})
}
