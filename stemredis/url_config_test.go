package stemredis

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
)

// TestParseConfigErrorsAreConfigErrors: every URL parseConfig refuses is a
// configuration error (stemdriver.ErrBadConfig), and none of them shows any
// part of the password, even one with unencoded '#', '/', '?' or '%' that
// the URL parser splits into host, path, query or fragment.
func TestParseConfigErrorsAreConfigErrors(t *testing.T) {
	for _, tc := range []struct{ url, secret, want string }{
		{"redis://:s3cret@localhost/0?bogus=1", "s3cret", "bogus"},
		{"redis://:s3cret@localhost/notanumber", "s3cret", "database"},
		{"redis://:s3cret@localhost/-1", "s3cret", "database"},
		{"redis://:s3cret@localhost/0?db=-2", "s3cret", "database"},
		{"redis://:s3cret@localhost/0?result_ttl=soon", "s3cret", "result_ttl"},
		{"rediss://:s3cret@localhost/0?tls_ca=/does/not/exist.pem", "s3cret", "exist.pem"},
		{"http://:s3cret@localhost/0", "s3cret", "scheme"},
		{"redis://u:Kq7x#Zm2w@127.0.0.1:1/0", "Kq7x", "invalid"},
		{"redis://u:Kq7x?Zm2w@127.0.0.1:1/0", "Kq7x", "invalid"},
		{"redis://u:Kq7x/Zm2w@127.0.0.1:1/0", "Kq7x", "invalid"},
		{"redis://Kq7x#Zm2w@127.0.0.1:1/0", "Kq7x", "invalid"},
		{"redis://Kq7x?Zm2w@127.0.0.1:1/0", "Kq7x", "invalid"},
		{"redis://:1234#5678@127.0.0.1:1/0", "1234", "invalid"},
		{"redis://u:Kq7x%zzZm2w@127.0.0.1:1/0", "Kq7x", "invalid"},
		{"redis://u:Kq7x#Zm2w/p?w%d@127.0.0.1:1/0", "Kq7x", "invalid"},
	} {
		_, err := parseConfig(tc.url, stemdriver.Options{})
		if err == nil {
			t.Errorf("parseConfig(%s) succeeded, want an error", tc.url)
			continue
		}
		msg := err.Error()
		if !errors.Is(err, stemdriver.ErrBadConfig) {
			t.Errorf("parseConfig(%s) = %q: does not match stemdriver.ErrBadConfig", tc.url, msg)
		}
		if strings.Contains(msg, tc.secret) {
			t.Errorf("parseConfig(%s) = %q: shows %q", tc.url, msg, tc.secret)
		}
		if !strings.Contains(msg, tc.want) || !strings.HasPrefix(msg, "stem: ") {
			t.Errorf("parseConfig(%s) = %q, want a stem: error mentioning %q", tc.url, msg, tc.want)
		}
	}
}

// TestOpenRefusedDatabaseIsAConfigError: a database number the server
// refuses is a configuration error; an unreachable server is not.
func TestOpenRefusedDatabaseIsAConfigError(t *testing.T) {
	u := testutil.NeedRedis(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg, err := parseConfig(u, stemdriver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(u, cfg.addr+"/"+strconv.Itoa(cfg.redis.DB), cfg.addr+"/100000", 1)
	if bad == u {
		t.Skipf("cannot rewrite the database of %s", u)
	}
	_, err = OpenResults(ctx, bad, stemdriver.Options{})
	if err == nil || !errors.Is(err, stemdriver.ErrBadConfig) || !strings.Contains(err.Error(), "100000") {
		t.Errorf("open of database 100000: %v, want a configuration error naming the database", err)
	}
	_, err = OpenResults(ctx, "redis://127.0.0.1:1/0", stemdriver.Options{})
	if err == nil || errors.Is(err, stemdriver.ErrBadConfig) {
		t.Errorf("open of an unreachable server: %v, want an error that is not a configuration error", err)
	}
}
