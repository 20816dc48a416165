package stemurl_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemurl"
)

// A libpq key=value connection string given where a URL belongs (a
// natural mistake with STEM_BROKER_URL for PostgreSQL) holds the password
// as password=...: Redact, and so every error naming the URL, must hide it.
func TestRedactKeyValueConnString(t *testing.T) {
	const pw = "s3cretPW"
	for _, raw := range []string{
		"host=127.0.0.1 user=u password=" + pw + " dbname=test",
		"postgres:host=127.0.0.1 password=" + pw,
		"user=u password='" + pw + "' host=db",
	} {
		if got := stemurl.Redact(raw); strings.Contains(got, pw) {
			t.Errorf("Redact(%q) = %q shows the password", strings.ReplaceAll(raw, pw, "xxxxx"), strings.ReplaceAll(got, pw, "<PASSWORD>"))
		}
		_, err := stemurl.New().OpenBroker(context.Background(), raw, stemdriver.Options{})
		if err == nil || strings.Contains(err.Error(), pw) {
			t.Errorf("OpenBroker(%q) = %v; want an error without the password", strings.ReplaceAll(raw, pw, "xxxxx"), err != nil)
		}
	}
}
