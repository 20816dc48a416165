package e2e

import (
	"net/url"
	"slices"
	"strings"
	"testing"
)

// plantedPasswords hold every character a URL treats specially. The first
// is the classic; the others have long runs between the special
// characters, so that a partly printed password is caught too.
var plantedPasswords = []string{
	"s3cr#t/p?w%d",
	"Kq7xZ#m2wLp/3RtH?c5Vd%dX9y",
	"Jf8wQ%41Hv5nB@Ux2cR:Ne5Pa",
}

// secretForms returns what of pw must never be printed: pw itself, its
// URL-encoded and decoded forms, and its runs of four or more characters
// between special characters.
func secretForms(pw string) []string {
	forms := []string{pw, url.QueryEscape(pw), url.PathEscape(pw), url.UserPassword("", pw).String()[1:]}
	if dec, err := url.PathUnescape(pw); err == nil {
		forms = append(forms, dec)
	}
	for _, f := range strings.FieldsFunc(pw, func(r rune) bool { return strings.ContainsRune("#/?%@: ", r) }) {
		if len(f) >= 4 {
			forms = append(forms, f)
		}
	}
	return slices.Compact(forms)
}

// leaked returns the first form of pw that s contains, or "".
func leaked(s, pw string) string {
	for _, f := range secretForms(pw) {
		if strings.Contains(s, f) {
			return f
		}
	}
	return ""
}

// withPassword returns the Redis URL u with a password, and that password:
// the one u already has, else a planted one (a server without passwords
// accepts any).
func withPassword(t *testing.T, u string) (string, string) {
	t.Helper()
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	if pw, ok := pu.User.Password(); ok && pw != "" {
		return u, pw
	}
	pw := plantedPasswords[1]
	pu.User = url.UserPassword(pu.User.Username(), pw)
	return pu.String(), pw
}

// secretURLs are URLs with the password pw where a user might put it:
// unencoded (malformed), encoded towards a closed port (unreachable), as a
// lone password, with a bad option or database, with another scheme.
func secretURLs(pw string) map[string]string {
	enc := url.UserPassword("admin", pw).String()
	return map[string]string{
		"raw":          "redis://admin:" + pw + "@127.0.0.1:1/0",
		"raw lone":     "redis://:" + pw + "@127.0.0.1:1/0",
		"encoded":      "rediss://" + enc + "@127.0.0.1:1/0",
		"bad option":   "redis://" + enc + "@127.0.0.1:1/0?bogus=1",
		"bad database": "redis://" + enc + "@127.0.0.1:1/abc",
		"postgres":     "postgres://admin:" + pw + "@127.0.0.1:1/stem",
		"amqp":         "amqp://" + enc + "@127.0.0.1:1/",
		"file":         "file://admin:" + pw + "@host/revokes.ndjson",
		// A password as a query option, which no backend takes.
		"query":      "redis://127.0.0.1:1/0?password=" + url.QueryEscape(pw),
		"file query": "file://" + tmpDir + "/revokes.ndjson?password=" + url.QueryEscape(pw),
	}
}

// everyPassword are the shapes of secretURLs tried with every planted
// password.
var everyPassword = []string{"raw", "raw lone", "encoded"}

// secretSlots bounds the runs of TestSecretsNeverPrinted at once.
var secretSlots = make(chan struct{}, 2)

// TestSecretsNeverPrinted runs the error paths of every command with a
// password planted in each URL variable and flag, for unreachable servers
// and malformed URLs, and checks that no output shows any form of it.
func TestSecretsNeverPrinted(t *testing.T) {
	t.Parallel()
	// The commands that open each URL; --timeout keeps a control command
	// short where its broker is the in-process default.
	ctl := func(cmd ...string) []string { return append(append([]string{"worker"}, cmd...), "--timeout", "100ms") }
	byBroker := [][]string{
		{"worker", "start", "--fail-fast"}, {"enqueue", "demo.echo"}, {"task", "status", "abc"},
		ctl("ping"), ctl("inspect"), ctl("stats"), ctl("revoke", "--task", "t1"),
		{"bench", "--tasks", "1"},
	}
	byResults := [][]string{
		{"worker", "start", "--fail-fast"}, {"enqueue", "demo.echo"}, {"task", "status", "abc"},
		ctl("revoke", "--task", "t1"), {"bench", "--tasks", "1"},
	}
	byRevokes := [][]string{{"worker", "start", "--fail-fast"}, ctl("revoke", "--task", "t1")}
	for _, src := range []struct {
		env, flag string
		cmds      [][]string
	}{
		{"STEM_BROKER_URL", "--broker", byBroker},
		{"STEM_RESULT_BACKEND_URL", "--backend", byResults},
		{"STEM_REVOKE_STORE_URL", "--revoke-store", byRevokes},
	} {
		for pi, pw := range plantedPasswords {
			for shape, u := range secretURLs(pw) {
				for _, cmd := range src.cmds {
					for _, viaFlag := range []bool{false, true} {
						// Every shape for the first password; the others
						// in the shapes that parse them differently. Flags
						// and variables meet in one place (app.urls): a
						// few shapes suffice.
						if (pi > 0 || viaFlag) && !slices.Contains(everyPassword, shape) || pi > 0 && viaFlag {
							continue
						}
						name := src.env + "/" + pw + "/" + shape + "/" + strings.Join(cmd[:2], " ")
						if viaFlag {
							name = src.flag + "/" + pw + "/" + shape + "/" + strings.Join(cmd[:2], " ")
						}
						t.Run(name, func(t *testing.T) {
							t.Parallel()
							// Hundreds of short runs: two at a time, so
							// that they do not starve the package's
							// other tests of CPU.
							secretSlots <- struct{}{}
							defer func() { <-secretSlots }()
							vars := map[string]string{"STEM_NAMESPACE": "e2e-" + randomHex(6)}
							args := cmd
							if viaFlag {
								args = append([]string{src.flag, u}, cmd...)
							} else {
								vars[src.env] = u
							}
							r := runStem(t, environ(vars), args...)
							if p := leaked(r.stdout+r.stderr, pw); p != "" {
								t.Errorf("output shows %q of the password %q: %s", p, pw, r)
							}
							if r.code != 69 && r.code != 78 {
								t.Errorf("want exit 69 or 78, got %s", r)
							}
						})
					}
				}
			}
		}
	}
}

// TestSecretsNeverPrintedReachable: with a password in the URLs of a
// server that answers, the commands' other messages (a task with no state,
// no worker replying) do not show it either.
func TestSecretsNeverPrintedReachable(t *testing.T) {
	t.Parallel()
	c := newCluster(t, redisStore)
	u, pw := withPassword(t, c.redis)
	for _, vars := range []map[string]string{
		{"STEM_BROKER_URL": u},
		{"STEM_RESULT_BACKEND_URL": u},
		{"STEM_REVOKE_STORE_URL": u},
	} {
		for _, args := range [][]string{
			{"enqueue", "demo.echo"},
			{"task", "status", strings.Repeat("0", 32)},
			{"worker", "ping", "--timeout", "100ms"},
			{"worker", "inspect", "--timeout", "100ms"},
			{"worker", "stats", "--timeout", "100ms"},
			{"worker", "revoke", "--task", "t-" + randomHex(4), "--timeout", "100ms"},
		} {
			r := c.runEnv(vars, args...)
			if p := leaked(r.stdout+r.stderr, pw); p != "" {
				t.Errorf("output shows %q of the password: %s", p, r)
			}
		}
	}
}
