package stemredis

import (
	"errors"
	"strings"
	"testing"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
)

// parseConfig accepts a URL or refuses it with a configuration error, and
// what it says of a URL never depends on the password: the same URL with
// another password gives the same message, or the same address.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{"redis://127.0.0.1:6379/0", "rediss://u:s3cret@h:6380/2?result_ttl=1h&pool_size=4",
		"redis://:p@ss/w0rd@h/0", "redis://u:pw@h/x", "redis://u:pwd@h/0?result_ttl=-1s", "redis://u:pw%zz@h",
		"redis://u:secret@h:99999/0", "redis://u:secret@h/0?unknown=1", "redis://u:secret@h/0?dial_timeout=secret",
		"http://u:secret@h", "redis://u:secret@h/0?protocol=9", "redis://h/-1", "redis://u:se#cret@h/0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		if strings.Contains(raw, "tls_") {
			return // would read files named by the input
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
		if cfg.redis == nil || cfg.addr == "" || cfg.resultTTL < 0 || cfg.redis.DB < 0 {
			t.Fatalf("%q: incomplete config %+v", raw, cfg)
		}
		if changed {
			cfg2, err := parseConfig(other, stemdriver.Options{})
			if err != nil || cfg2.addr != cfg.addr {
				t.Fatalf("%q accepted, %q not the same: %v", raw, other, err)
			}
		}
	})
}
