package stemurl_test

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemurl"
)

// secretParts returns pw and what of it could leak: its URL-encoded forms
// and every run of four or more characters between the characters URLs
// treat specially.
func secretParts(pw string) []string {
	parts := []string{pw, url.QueryEscape(pw), url.PathEscape(pw), url.UserPassword("u", pw).String()}
	for _, f := range strings.FieldsFunc(pw, func(r rune) bool { return strings.ContainsRune("#/?%@:", r) }) {
		if len(f) >= 4 {
			parts = append(parts, f)
		}
	}
	return parts
}

func leaks(s, pw string) string {
	for _, p := range secretParts(pw) {
		if strings.Contains(s, p) {
			return p
		}
	}
	return ""
}

func TestRedactTable(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"memory://", "memory://"},
		{"memory://other", "memory://other"},
		{"/var/lib/stem/revokes.ndjson", "/var/lib/stem/revokes.ndjson"},
		{"file:///var/lib/stem/revokes.ndjson", "file:///var/lib/stem/revokes.ndjson"},
		{"redis://127.0.0.1:6379/0?dial_timeout=1s", "redis://127.0.0.1:6379/0?dial_timeout=1s"},
		{"redis://user:pw1234@host:6379/0", "redis://user:xxxxx@host:6379/0"},
		{"redis://:pw1234@host/0", "redis://:xxxxx@host/0"},
		// go-redis takes a lone user name for a password.
		{"redis://pw1234@host/0", "redis://xxxxx@host/0"},
		{"rediss://user:p@ss1234@host:6380/1", "rediss://user:xxxxx@host:6380/1"},
		// Passwords with unencoded '#', '/', '?' or '%': everything between
		// :// and the last @ goes.
		{"redis://u:s3cr#t/p?w%d@127.0.0.1:1/0", "redis://xxxxx@127.0.0.1:1/0"},
		{"redis://u:1234#5678@host/0", "redis://xxxxx@host/0"},
		{"redis://u:1234/5678@host/0", "redis://xxxxx@host/0"},
		{"redis://u:1234?5678@host/0", "redis://xxxxx@host/0"},
		{"redis://u:pa%zzss@host/0", "redis://xxxxx@host/0"},
		{"postgres://u:p/w1234@db.example/stem?sslmode=disable", "postgres://xxxxx@db.example/stem?sslmode=disable"},
		// Unparsable without an @: only the scheme is kept.
		{"redis://host:6379/%zz", "redis://<unparsable URL>"},
		// A password given as a query option (which go-redis does not
		// take, so the URL is echoed in the error): its value goes, and
		// with it the rest of the URL, where a raw '&' or '#' may have
		// carried part of it.
		{"redis://127.0.0.1:1/0?password=pw1234", "redis://127.0.0.1:1/0?password=xxxxx"},
		{"redis://127.0.0.1:1/0?dial_timeout=1s&Password=pw1234&pool_size=3", "redis://127.0.0.1:1/0?dial_timeout=1s&Password=xxxxx"},
		{"redis://u:pw1234@h/0?sentinel_password=pw5678#x", "redis://u:xxxxx@h/0?sentinel_password=xxxxx"},
		{"postgres://h/db?sslmode=disable&auth_token=t0k3n", "postgres://h/db?sslmode=disable&auth_token=xxxxx"},
		{"file:///var/lib/r.ndjson?secret=pw1234", "file:///var/lib/r.ndjson?secret=xxxxx"},
		{"redis://u:s3cr#t@h/0?password=pw1234", "redis://xxxxx@h/0?password=xxxxx"},
		// No scheme but something like a user: the part before the @ goes.
		{"u:pw1234@host:6379", "xxxxx@host:6379"},
	} {
		if got := stemurl.Redact(tc.in); got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// plantedPasswords are passwords with every character a URL treats
// specially, unencoded.
var plantedPasswords = []string{
	"s3cr#tK7/pQ9?wZ4%dX2",
	"Kq7x#Zm2",
	"Jf8w/Lp3Rt",
	"Hv5n?Yb6Tc",
	"Wd4s%zzGk9",
	"Wd4s%41Gk9",
	"Ux2c@Ne5Pa",
	"Ux2c:Ne5Pa",
	"Mi3o Bq7Lr",
}

// urlShapes plant a password in every place of a URL a user might put one.
func urlShapes(pw string) []string {
	enc := url.UserPassword("admin", pw).String()
	shapes := []string{
		"redis://admin:" + pw + "@127.0.0.1:1/0",
		"redis://:" + pw + "@127.0.0.1:1/0",
		"redis://" + enc + "@127.0.0.1:1/0",
		"rediss://admin:" + pw + "@127.0.0.1:1/0?bogus=1",
		"redis://admin:" + pw + "@127.0.0.1:1/abc",
		"postgres://admin:" + pw + "@127.0.0.1:1/stem",
		"amqp://admin:" + pw + "@127.0.0.1:1/",
		"memory://admin:" + pw + "@x",
		"file://admin:" + pw + "@host/revokes.ndjson",
		"admin:" + pw + "@127.0.0.1:1",
		"redis://127.0.0.1:1/0?password=" + url.QueryEscape(pw),
		"redis://127.0.0.1:1/0?dial_timeout=1s&password=" + pw,
		"file:///tmp/revokes.ndjson?password=" + url.QueryEscape(pw),
		"file:///tmp/revokes.ndjson?password=" + pw,
	}
	if !strings.Contains(pw, ":") {
		// A lone user name, which go-redis takes for a password (with a
		// colon it would be a user name and a password).
		shapes = append(shapes, "redis://"+pw+"@127.0.0.1:1/0")
	}
	return shapes
}

func TestRedactNeverShowsAPassword(t *testing.T) {
	for _, pw := range plantedPasswords {
		for _, raw := range urlShapes(pw) {
			if got := stemurl.Redact(raw); leaks(got, pw) != "" {
				t.Errorf("Redact(%q) = %q: shows %q", raw, got, leaks(got, pw))
			}
		}
	}
}

// TestOpenErrorsNeverShowAPassword opens every role from every planted
// URL: the errors say what is wrong without the password.
func TestOpenErrorsNeverShowAPassword(t *testing.T) {
	r := stemurl.New()
	ctx := context.Background()
	opts := stemdriver.Options{Namespace: "t"}
	for _, pw := range plantedPasswords {
		for _, raw := range urlShapes(pw) {
			for role, open := range map[string]func() error{
				"broker":  func() error { b, err := r.OpenBroker(ctx, raw, opts); closeIf(b, err); return err },
				"results": func() error { b, err := r.OpenResults(ctx, raw, opts); closeIf(b, err); return err },
				"revokes": func() error { b, err := r.OpenRevokes(ctx, raw, opts); closeIf(b, err); return err },
				"control": func() error { b, err := r.OpenControl(ctx, raw, opts); closeIf(b, err); return err },
			} {
				err := open()
				if err == nil {
					if !strings.HasPrefix(raw, "memory:") {
						t.Errorf("%s %q opened", role, raw)
					}
					continue
				}
				if p := leaks(err.Error(), pw); p != "" {
					t.Errorf("%s %q: error %q shows %q", role, raw, err, p)
				}
			}
		}
	}
}

func closeIf(c interface{ Close() error }, err error) {
	if err == nil {
		_ = c.Close()
	}
}

// TestConfigErrorsMatchErrBadConfig: a URL that can never work is a
// configuration error; a server that cannot be reached is not.
func TestConfigErrorsMatchErrBadConfig(t *testing.T) {
	r := stemurl.New()
	ctx := context.Background()
	opts := stemdriver.Options{Namespace: "t"}
	missingDir := "file://" + filepath.Join(t.TempDir(), "no-such-dir", "r.ndjson")
	for _, tc := range []struct {
		name, role, url string
		config          bool
		say             string
	}{
		{"unknown scheme", "broker", "amqp://guest@localhost", true, "scheme"},
		{"postgres unreachable", "broker", "postgres://u:pw@127.0.0.1:1/db?connect_timeout=2", false, "127.0.0.1:1"},
		{"postgres port out of range", "broker", "postgres://u:pw@127.0.0.1:99999/db", true, "port"},
		{"sqlite without a path", "broker", "sqlite://", true, "names no file"},
		{"sqlite unknown option", "broker", "sqlite:///nonexistent-dir/stem.db?bogus=1", true, "bogus"},
		{"postgres schema list", "results", "postgres://u:pw@localhost/stem?search_path=a,b", true, "schema"},
		{"postgresql query that does not parse", "revokes", "postgresql://localhost/stem?search_path=a;", true, "query"},
		{"empty", "broker", "", true, "no broker URL"},
		{"malformed redis", "broker", "redis://u:pa%zz@localhost/0", true, "invalid"},
		{"unknown redis option", "results", "redis://localhost/0?bogus=1", true, "bogus"},
		{"bad database number", "control", "redis://localhost/abc", true, "database"},
		{"negative database number", "broker", "redis://localhost/-1", true, "database"},
		{"malformed memory", "broker", "memory://x:%zz@y", true, "memory"},
		{"file URL with a query", "revokes", "file:///tmp/r.ndjson?x=1", true, "query"},
		{"file URL with a user", "revokes", "file://u:pw@host/r.ndjson", true, "user"},
		{"file URL with a user, no slashes", "revokes", "file:u:pw@host/r.ndjson", true, "user"},
		{"bare path with a colon", "revokes", "redis:6379", true, "revoke store"},
		{"port out of range", "broker", "redis://127.0.0.1:99999/0", true, "port"},
		{"port zero", "results", "rediss://u:pw@127.0.0.1:0/0", true, "port"},
		{"port out of range, revokes", "revokes", "redis://127.0.0.1:65536/0", true, "port"},
		{"port out of range, control", "control", "redis://127.0.0.1:70000/0", true, "port"},
		{"unreachable redis", "broker", "redis://127.0.0.1:1/0", false, "127.0.0.1:1"},
		{"missing directory", "revokes", missingDir, false, "no-such-dir"},
		{"sqlite file that is not SQLite", "broker", "sqlite://" + garbageFile(t), true, "not a SQLite database"},
		{"sqlite path that is a directory", "results", "sqlite://" + t.TempDir(), true, "directory"},
		{"sqlite missing directory", "control", "sqlite://" + strings.TrimPrefix(missingDir, "file://") + ".db", false, "no-such-dir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			switch tc.role {
			case "broker":
				var b stemdriver.Broker
				b, err = r.OpenBroker(ctx, tc.url, opts)
				closeIf(b, err)
			case "results":
				var b stemdriver.ResultBackend
				b, err = r.OpenResults(ctx, tc.url, opts)
				closeIf(b, err)
			case "revokes":
				var b stemdriver.RevokeStore
				b, err = r.OpenRevokes(ctx, tc.url, opts)
				closeIf(b, err)
			case "control":
				var b stemdriver.ControlTransport
				b, err = r.OpenControl(ctx, tc.url, opts)
				closeIf(b, err)
			}
			if err == nil {
				t.Fatalf("%s %q opened", tc.role, tc.url)
			}
			if got := errors.Is(err, stemdriver.ErrBadConfig); got != tc.config {
				t.Errorf("errors.Is(%q, ErrBadConfig) = %t, want %t", err, got, tc.config)
			}
			if !strings.Contains(err.Error(), tc.say) || !strings.HasPrefix(err.Error(), "stem: ") {
				t.Errorf("error %q: want a stem: error mentioning %q", err, tc.say)
			}
			if strings.Contains(err.Error(), "pa%zz") || strings.Contains(err.Error(), ":pw@") {
				t.Errorf("error %q shows a password", err)
			}
		})
	}
}

// TestCheckRefusesANonDurableRevokeStore: memory:// for revokes beside a
// broker other processes share would publish revokes no store holds.
func TestCheckRefusesANonDurableRevokeStore(t *testing.T) {
	for _, tc := range []struct {
		name string
		u    stemurl.URLs
		ok   bool
	}{
		{"all memory", stemurl.URLs{Broker: "memory://", Results: "memory://", Revokes: "memory://", RevokesFrom: "default"}, true},
		{"redis for all", stemurl.URLs{Broker: "redis://h/0", Results: "redis://h/0", Revokes: "redis://h/0", RevokesFrom: stemurl.EnvBroker}, true},
		{"file beside redis", stemurl.URLs{Broker: "redis://h/0", Results: "redis://h/0", Revokes: "file:///r", RevokesFrom: stemurl.EnvRevokeStore}, true},
		{"redis beside memory", stemurl.URLs{Broker: "memory://", Results: "memory://", Revokes: "redis://h/0", RevokesFrom: stemurl.EnvRevokeStore}, true},
		{"memory beside redis", stemurl.URLs{Broker: "redis://:pw1234@h/0", Results: "redis://h/0", Revokes: "memory://", RevokesFrom: stemurl.EnvRevokeStore}, false},
		{"named memory beside redis", stemurl.URLs{Broker: "rediss://h/0", Results: "rediss://h/0", Revokes: "MEMORY://x", RevokesFrom: "--revoke-store"}, false},
		{"memory beside postgres", stemurl.URLs{Broker: "postgres://h/0", Results: "postgres://h/0", Revokes: "memory://", RevokesFrom: stemurl.EnvResults}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.u.Check()
			if tc.ok {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Check accepted a revoke store that cannot be durable")
			}
			msg := err.Error()
			if !errors.Is(err, stemdriver.ErrBadConfig) || !strings.Contains(msg, tc.u.RevokesFrom) ||
				!strings.Contains(msg, "durable") || strings.Contains(msg, "pw1234") {
				t.Errorf("Check = %q: want a configuration error naming %s and why, without the password", msg, tc.u.RevokesFrom)
			}
		})
	}
}

func TestStoresAreRedacted(t *testing.T) {
	u := stemurl.URLs{Broker: "redis://:pw1234@h/0", Results: "redis://u:pw5678@h/1", Revokes: "file:///r.ndjson"}
	s := u.Stores()
	if s.Broker != "redis://:xxxxx@h/0" || s.Control != s.Broker || s.Results != "redis://u:xxxxx@h/1" || s.Revokes != "file:///r.ndjson" {
		t.Errorf("Stores = %+v", s)
	}
}

// garbageFile returns the path of a file that holds text, not a database.
func garbageFile(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "notes.db")
	if err := os.WriteFile(p, []byte("not a database, just notes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
