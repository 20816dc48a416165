package stempostgres_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stempostgres"
)

// Bad URLs are configuration errors that name the problem and never the
// password.
func TestBadURLs(t *testing.T) {
	const pw = "s3cretPW"
	cases := []struct{ name, url, want string }{
		{"scheme", "mysql://u:" + pw + "@127.0.0.1/db", "scheme must be postgres or postgresql"},
		{"schema list", "postgres://u:" + pw + "@127.0.0.1/db?search_path=a,b", "want one schema name"},
		{"empty schema", "postgres://u:" + pw + "@127.0.0.1/db?search_path=", "empty schema name"},
		{"result_ttl", "postgres://u:" + pw + "@127.0.0.1/db?result_ttl=soon", "result_ttl"},
		{"sslmode", "postgres://u:" + pw + "@127.0.0.1/db?sslmode=sometimes", "sslmode"},
		{"unencoded password", "postgres://u:pa/ss" + pw + "@127.0.0.1/db", "invalid URL"},
		// A query that does not parse must not lose its options: read
		// without search_path, it would open the public schema, another
		// deployment's.
		{"semicolon in the query", "postgres://u:" + pw + "@127.0.0.1/db?search_path=tenant_a;", "query"},
		{"bad escape in the query", "postgres://u:" + pw + "@127.0.0.1/db?search_path=tenant%zz", "query"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := stempostgres.OpenBroker(context.Background(), c.url, stemdriver.Options{Logger: quiet()})
			if !errors.Is(err, stemdriver.ErrBadConfig) {
				t.Fatalf("err = %v, want ErrBadConfig", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("err = %q, want it to say %q", err, c.want)
			}
			if strings.Contains(err.Error(), pw) {
				t.Errorf("err = %q shows the password", err)
			}
		})
	}
}

// An unreachable server is not a configuration error, and its error shows
// neither the password nor the user.
func TestUnreachableServer(t *testing.T) {
	const pw = "s3cretPW"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := stempostgres.OpenResults(ctx, "postgres://someone:"+pw+"@127.0.0.1:1/db?connect_timeout=2&sslmode=disable", stemdriver.Options{Logger: quiet()})
	if err == nil || errors.Is(err, stemdriver.ErrBadConfig) {
		t.Fatalf("err = %v, want an unavailability error", err)
	}
	if strings.Contains(err.Error(), pw) {
		t.Fatalf("err = %q shows the password", err)
	}
	if !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("err = %q does not name the server", err)
	}
}

// An option the server does not know is a configuration error.
func TestUnknownOptionRefusedByServer(t *testing.T) {
	u := testutil.PostgresSchema(t)
	_, err := stempostgres.OpenRevokes(context.Background(), u+"&no_such_option=1", stemdriver.Options{Logger: quiet()})
	if !errors.Is(err, stemdriver.ErrBadConfig) {
		t.Fatalf("err = %v, want ErrBadConfig", err)
	}
}

// A remote host reachable without TLS is opened with a warning naming it
// (never the password); sslmode=require, or a loopback host, opens
// without one.
func TestPlaintextWarning(t *testing.T) {
	const pw = "s3cretPW"
	open := func(u string) string {
		var buf bytes.Buffer
		log := slog.New(slog.NewTextHandler(&buf, nil))
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if b, err := stempostgres.OpenBroker(ctx, u, stemdriver.Options{Logger: log}); err == nil {
			b.Close()
		}
		return buf.String()
	}
	// 192.0.2.1 (TEST-NET-1) never answers: the warning comes before the
	// connection attempt.
	for _, mode := range []string{"", "sslmode=disable&", "sslmode=prefer&", "sslmode=allow&"} {
		logs := open("postgres://u:" + pw + "@192.0.2.1:5432/db?" + mode + "connect_timeout=1")
		if !strings.Contains(logs, "plaintext") || !strings.Contains(logs, "192.0.2.1") {
			t.Errorf("%q: logs %q, want a plaintext warning naming the host", mode, logs)
		}
		if strings.Contains(logs, pw) {
			t.Errorf("%q: logs show the password: %q", mode, logs)
		}
	}
	if logs := open("postgres://u:" + pw + "@192.0.2.1:5432/db?sslmode=require&connect_timeout=1"); strings.Contains(logs, "plaintext") {
		t.Errorf("sslmode=require: logs %q, want no plaintext warning", logs)
	}
	if logs := open(testutil.PostgresSchema(t)); strings.Contains(logs, "plaintext") {
		t.Errorf("loopback: logs %q, want no plaintext warning", logs)
	}
}
