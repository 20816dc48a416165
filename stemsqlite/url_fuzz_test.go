package stemsqlite

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
)

// parseConfig accepts a URL, naming a clean file path, or refuses it with
// a configuration error whose message does not depend on a password
// (sqlite:// takes none, but a URL written for another backend may carry
// one).
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{"sqlite:///var/lib/stem.db", "sqlite://rel/stem.db?result_ttl=1h", "sqlite://a%20b.db",
		"sqlite://u:secret@host/x.db?bad=1", "sqlite://u:secret@h/x.db#frag", "sqlite://u:secret@h/%zz", "sqlite://u:secret@h/",
		"SQLITE://u:secret@h/x.db", "sqlite://u:secret@h/x.db?result_ttl=secret", "sqlite://", "sqlite://x.db?password=hunter22",
		"postgres://u:secret@h/d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		cfg, err := parseConfig(raw, stemdriver.Options{})
		other, changed := testutil.OtherPassword(raw)
		if err != nil {
			if cfg != nil || !errors.Is(err, stemdriver.ErrBadConfig) {
				t.Fatalf("%q: %+v, %v: want a configuration error alone", raw, cfg, err)
			}
			if !changed {
				return
			}
			if _, err2 := parseConfig(other, stemdriver.Options{}); err2 == nil || testutil.LeaksPassword(raw, err.Error(), other, err2.Error()) {
				t.Fatalf("the message depends on the password:\n%q: %v\n%q: %v", raw, err, other, err2)
			}
			return
		}
		if cfg.path == "" || cfg.path != filepath.Clean(cfg.path) || cfg.resultTTL < 0 {
			t.Fatalf("%q: config %+v", raw, cfg)
		}
	})
}
