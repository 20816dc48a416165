package stempostgres

import (
	"errors"
	"strings"
	"testing"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
)

// parseConfig accepts a URL or refuses it with a configuration error, and
// neither its messages nor the URL it shows depend on the password.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{"postgres://postgres@127.0.0.1:5432/test?sslmode=disable",
		"postgresql://u:s3cret@db:5432/app?search_path=stem_a&result_ttl=24h", "postgres://u:secret@h/d?search_path=pg_x",
		"postgres://u:secret@h/d?search_path=a,b", "postgres://u:secret@h/d?result_ttl=x", "postgres://u:secret@h/d?sslmode=bogus",
		"postgres://u:secret@h/d?connect_timeout=secret", "postgres://u:secret@h:0/d", "postgres://u:se/cret@h/d",
		"postgres:host=h password=secret", "host=h password=secret", "postgres://u:secret@h/d?pool_max_conns=-1",
		"postgres://u:secret@h/d?search_path=a&search_path=b", "postgres://u:secret@h1,h2:5433/d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		for _, k := range []string{"sslrootcert", "sslcert", "sslkey", "passfile", "service", "sslpassword"} {
			if strings.Contains(raw, k) {
				return // would read files named by the input
			}
		}
		cfg, err := parseConfig(raw, stemdriver.Options{})
		other, changed := testutil.OtherPassword(raw)
		if err != nil {
			if cfg != nil || !errors.Is(err, stemdriver.ErrBadConfig) {
				t.Fatalf("%q: %+v, %v: want a configuration error alone", raw, cfg, err)
			}
			if !changed {
				return
			}
			_, err2 := parseConfig(other, stemdriver.Options{})
			if err2 == nil || testutil.LeaksPassword(raw, err.Error(), other, err2.Error()) {
				t.Fatalf("the message depends on the password:\n%q: %v\n%q: %v", raw, err, other, err2)
			}
			return
		}
		if cfg.pool == nil || cfg.schema == "" || checkSchemaName(cfg.schema) != nil || cfg.resultTTL < 0 {
			t.Fatalf("%q: config %+v", raw, cfg)
		}
		if changed {
			cfg2, err := parseConfig(other, stemdriver.Options{})
			if err != nil || cfg2.shown != cfg.shown || cfg2.schema != cfg.schema {
				t.Fatalf("%q accepted and shown as %q, %q: %+v, %v", raw, cfg.shown, other, cfg2, err)
			}
		}
	})
}
