package stemurl

import (
	"strings"
	"testing"

	"github.com/stem-go/stem/internal/testutil"
)

// Redact hides the password of any URL: what it returns does not depend
// on the password, and never holds it. Its result is stable: redacting
// it again changes nothing that was hidden.
func FuzzRedact(f *testing.F) {
	for _, s := range []string{"redis://u:s3cret@h:6379/0", "rediss://:p@ss/w0rd@h/0", "postgres://u:secret@h/d?password=x&sslmode=require",
		"postgres://u:se?cret@h/d", "sqlite:///x.db", "file://u:secret@h/x", "memory://hub", "host=h password=secret",
		"/var/lib/revokes.ndjson", "redis://u:pw%41d@h", "REDIS://U:SECRET@H", "x://a:b@c@d/e#f@g", "redis://h/0?auth_token=abc&x=1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		got := Redact(raw)
		if other, ok := testutil.OtherPassword(raw); ok {
			if o := Redact(other); testutil.LeaksPassword(raw, got, other, o) {
				t.Fatalf("Redact shows the password:\n%q -> %q\n%q -> %q", raw, got, other, o)
			}
		}
		if strings.Contains(raw, redacted) {
			return // the input's own "xxxxx" tells nothing
		}
		if again := Redact(got); strings.Count(again, redacted) < strings.Count(got, redacted) {
			t.Fatalf("Redact(%q) = %q, and again %q shows more", raw, got, again)
		}
	})
}
