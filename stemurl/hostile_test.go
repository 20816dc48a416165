package stemurl_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemurl"
)

// TestRevokeFileThatIsNoFileIsBadConfig: a revoke store path that names a
// directory or a device can never hold revoke records: a configuration
// error (the CLI's exit 78, a retry cannot help), while a directory that
// does not exist yet (a volume not mounted yet) is an outage to retry.
func TestRevokeFileThatIsNoFileIsBadConfig(t *testing.T) {
	dir := t.TempDir()
	r := stemurl.New()
	opts := stemdriver.Options{Namespace: "atk"}
	for _, raw := range []string{dir, "file://" + dir, os.DevNull, "file://" + os.DevNull} {
		s, err := r.OpenRevokes(context.Background(), raw, opts)
		if err == nil {
			_ = s.Close()
			t.Errorf("OpenRevokes(%q): no error, want one matching ErrBadConfig", raw)
			continue
		}
		if !errors.Is(err, stemdriver.ErrBadConfig) {
			t.Errorf("OpenRevokes(%q): %v, want an error matching ErrBadConfig", raw, err)
		}
	}
	missing := filepath.Join(dir, "not-yet", "revokes.ndjson")
	if s, err := r.OpenRevokes(context.Background(), missing, opts); err == nil {
		_ = s.Close()
		t.Errorf("OpenRevokes(%q): no error, want one", missing)
	} else if errors.Is(err, stemdriver.ErrBadConfig) {
		t.Errorf("OpenRevokes(%q): %v matches ErrBadConfig, want an outage (the directory may appear)", missing, err)
	}
}
