package stempostgres_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stempostgres"
)

// A libpq key=value connection string, or a URL without "//", is not the
// URL form stem takes: it is refused as a configuration error, before any
// connection, and the error never shows the password it holds.
func TestKeyValueConnStringIsRefusedWithoutThePassword(t *testing.T) {
	const pw = "s3cretPW"
	for _, u := range []string{
		"host=127.0.0.1 user=u password=" + pw + " dbname=test",
		"postgres:host=127.0.0.1 password=" + pw,
		"postgresql:user=u password=" + pw,
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		b, err := stempostgres.OpenBroker(ctx, u, stemdriver.Options{Logger: quiet()})
		cancel()
		if err == nil {
			b.Close()
			t.Errorf("%q opened; want a configuration error", strings.ReplaceAll(u, pw, "xxxxx"))
			continue
		}
		if !errors.Is(err, stemdriver.ErrBadConfig) {
			t.Errorf("%q: err = %v, want ErrBadConfig", strings.ReplaceAll(u, pw, "xxxxx"), strings.ReplaceAll(err.Error(), pw, "xxxxx"))
		}
		if strings.Contains(err.Error(), pw) {
			t.Errorf("%q: err shows the password: %q", strings.ReplaceAll(u, pw, "xxxxx"), strings.ReplaceAll(err.Error(), pw, "<PASSWORD>"))
		}
		if _, err := stempostgres.SchemaFromURL(u); err == nil || strings.Contains(err.Error(), pw) {
			t.Errorf("SchemaFromURL(%q) = %v; want an error without the password", strings.ReplaceAll(u, pw, "xxxxx"), err != nil)
		}
	}
}
