// Package stemurl opens stem's backends from URLs: the one place that knows
// every URL scheme, so that the CLI, workers and programs configure brokers,
// result backends, revoke stores and control transports the same way.
//
// Resolve (or FromEnv) decides which URL each store comes from; a
// Resolver's Open opens exactly the stores a program needs and returns
// them as one Opened to close:
//
//	r := stemurl.New()
//	o, err := r.Open(ctx, stemurl.FromEnv(os.Getenv), stemurl.AllRoles, stemdriver.Options{Namespace: "stem"})
//	if err != nil {
//		return err // errors.Is(err, stemdriver.ErrBadConfig): fix the URL, a retry cannot help
//	}
//	defer o.Close()
//	w, err := stem.NewWorker(stem.WorkerConfig{Registry: reg, Broker: o.Broker, Results: o.Results,
//		Revokes: o.Revokes, Control: o.Control})
//
// Schemes:
//
//	sqlite://PATH              a SQLite file, every role (package stemsqlite); the embedded default
//	postgres://, postgresql:// PostgreSQL, every role (package stempostgres)
//	memory://[NAME]            in-process (tests, demos, one process only)
//	redis://, rediss://        Redis (package stemredis)
//	file://PATH or a bare path newline-delimited JSON revoke store (package stemfile)
//
// With nothing configured, every store is the SQLite file Default names
// (stem.db in StateDir), shared by every program and command of the user
// on the host. An unknown
// scheme is an error, never a silent fallback. Every error of a URL that
// can never work (a scheme, a malformed URL, an unknown option, a bad
// database number) matches stemdriver.ErrBadConfig, so that callers tell it
// from a server that cannot be reached without reading its text. No error
// or Redact result shows a password.
package stemurl

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemfile"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stempostgres"
	"github.com/stem-go/stem/stemredis"
	"github.com/stem-go/stem/stemsqlite"
	"github.com/stem-go/stem/stemtype"
)

// Environment variables read by Resolve and FromEnv.
const (
	EnvBroker      = "STEM_BROKER_URL"
	EnvResults     = "STEM_RESULT_BACKEND_URL"
	EnvRevokeStore = "STEM_REVOKE_STORE_URL"
	EnvNamespace   = "STEM_NAMESPACE"
)

// Resolver opens backends from URLs. memory:// URLs with the same name
// opened from one Resolver share one in-process hub, so a broker and a
// control transport of one program see each other. The zero value is not
// usable; call New.
type Resolver struct {
	mu   sync.Mutex
	hubs map[string]*stemmem.Hub
}

// New returns a Resolver.
func New() *Resolver { return &Resolver{hubs: make(map[string]*stemmem.Hub)} }

// Hub returns the in-process hub that memory://NAME URLs open.
func (r *Resolver) Hub(name string) *stemmem.Hub {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.hubs[name]
	if h == nil {
		h = stemmem.New()
		r.hubs[name] = h
	}
	return h
}

// scheme returns the URL's scheme, "" for a string without "://".
func scheme(raw string) string {
	i := strings.Index(raw, "://")
	if i <= 0 {
		return ""
	}
	return strings.ToLower(raw[:i])
}

// badConfig returns a configuration error (matching
// stemdriver.ErrBadConfig) with a formatted message.
func badConfig(format string, args ...any) error {
	return stemdriver.BadConfig(fmt.Errorf(format, args...))
}

func memoryName(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Parse's reason quotes the URL, password and all.
		return "", badConfig("stem: memory URL %s is malformed", Redact(raw))
	}
	return u.Host + u.Path, nil
}

// unknown is the configuration error of a URL no backend of role opens.
func unknown(role, raw string, supported string) error {
	if raw == "" {
		return badConfig("stem: no %s URL given", role)
	}
	return badConfig("stem: unsupported %s URL %q: scheme must be one of %s", role, Redact(raw), supported)
}

// filePath returns the path a file: URL names, refusing a user name or
// password (a file store has none, and stemfile would take one for part of
// a relative path and print it).
func filePath(raw string) (string, error) {
	rest := strings.TrimPrefix(raw[len("file:"):], "//")
	if !strings.HasPrefix(rest, "/") && strings.Contains(rest, "@") {
		return "", badConfig("stem: revoke store URL %q: a file URL takes no user name or password", Redact(raw))
	}
	// Refused here, redacted: stemfile would print the URL as given, and
	// a query may hold a password.
	if strings.ContainsAny(rest, "?#") {
		return "", badConfig("stem: revoke store URL %q: query parameters and fragments are not supported", Redact(raw))
	}
	path, err := stemfile.PathFromURL(raw)
	if err != nil {
		return "", stemdriver.BadConfig(err)
	}
	return path, nil
}

// checkPort refuses a server URL whose port is no TCP port (0, or above
// 65535): a configuration error, which the dial would report as a server
// that cannot be reached. A URL that does not parse is left to the driver,
// which says so without showing its password.
func checkPort(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Port() == "" {
		return nil
	}
	if n, err := strconv.Atoi(u.Port()); err != nil || n < 1 || n > 65535 {
		return badConfig("stem: URL %s: port %s is not a TCP port (1 to 65535)", Redact(raw), u.Port())
	}
	return nil
}

// OpenBroker opens a broker.
func (r *Resolver) OpenBroker(ctx context.Context, raw string, opts stemdriver.Options) (stemdriver.Broker, error) {
	switch scheme(raw) {
	case "memory":
		name, err := memoryName(raw)
		if err != nil {
			return nil, err
		}
		return r.Hub(name).Broker(opts), nil
	case "redis", "rediss":
		if err := checkPort(raw); err != nil {
			return nil, err
		}
		return stemredis.OpenBroker(ctx, raw, opts)
	case "sqlite":
		return stemsqlite.OpenBroker(ctx, raw, opts)
	case "postgres", "postgresql":
		if err := checkPort(raw); err != nil {
			return nil, err
		}
		return stempostgres.OpenBroker(ctx, raw, opts)
	}
	return nil, unknown("broker", raw, "sqlite://, postgres://, memory://, redis://, rediss://")
}

// OpenResults opens a result backend.
func (r *Resolver) OpenResults(ctx context.Context, raw string, opts stemdriver.Options) (stemdriver.ResultBackend, error) {
	switch scheme(raw) {
	case "memory":
		name, err := memoryName(raw)
		if err != nil {
			return nil, err
		}
		return r.Hub(name).Results(opts), nil
	case "redis", "rediss":
		if err := checkPort(raw); err != nil {
			return nil, err
		}
		return stemredis.OpenResults(ctx, raw, opts)
	case "sqlite":
		return stemsqlite.OpenResults(ctx, raw, opts)
	case "postgres", "postgresql":
		if err := checkPort(raw); err != nil {
			return nil, err
		}
		return stempostgres.OpenResults(ctx, raw, opts)
	}
	return nil, unknown("result backend", raw, "sqlite://, postgres://, memory://, redis://, rediss://")
}

// OpenRevokes opens a revoke store. A string without a scheme is a file
// path.
func (r *Resolver) OpenRevokes(ctx context.Context, raw string, opts stemdriver.Options) (stemdriver.RevokeStore, error) {
	switch scheme(raw) {
	case "memory":
		name, err := memoryName(raw)
		if err != nil {
			return nil, err
		}
		return r.Hub(name).Revokes(), nil
	case "redis", "rediss":
		if err := checkPort(raw); err != nil {
			return nil, err
		}
		return stemredis.OpenRevokes(ctx, raw, opts)
	case "sqlite":
		return stemsqlite.OpenRevokes(ctx, raw, opts)
	case "postgres", "postgresql":
		if err := checkPort(raw); err != nil {
			return nil, err
		}
		return stempostgres.OpenRevokes(ctx, raw, opts)
	case "file":
		path, err := filePath(raw)
		if err != nil {
			return nil, err
		}
		return openFile(path, opts)
	case "":
		switch {
		case strings.HasPrefix(strings.ToLower(raw), "file:"):
			path, err := filePath(raw)
			if err != nil {
				return nil, err
			}
			return openFile(path, opts)
		case strings.HasPrefix(raw, "/"), strings.HasPrefix(raw, "."), raw != "" && !strings.Contains(raw, ":"):
			// A bare path; one with a colon must start with / or . so
			// that a mistyped URL is not taken for a file name.
			return openFile(raw, opts)
		}
	}
	return nil, unknown("revoke store", raw, "sqlite://, postgres://, memory://, redis://, rediss://, file:// or a bare path")
}

// openFile opens the file revoke store at path. A path that exists but is
// no regular file (a directory, a device) can never hold records: its
// error matches stemdriver.ErrBadConfig. Any other failure (a directory
// that does not exist yet, a file that cannot be opened) may mend.
func openFile(path string, opts stemdriver.Options) (stemdriver.RevokeStore, error) {
	s, err := stemfile.OpenRevokes(path, opts)
	if err != nil {
		if fi, statErr := os.Stat(path); statErr == nil && !fi.Mode().IsRegular() {
			return nil, stemdriver.BadConfig(err)
		}
		return nil, err
	}
	return s, nil
}

// OpenControl opens a control transport.
func (r *Resolver) OpenControl(ctx context.Context, raw string, opts stemdriver.Options) (stemdriver.ControlTransport, error) {
	switch scheme(raw) {
	case "memory":
		name, err := memoryName(raw)
		if err != nil {
			return nil, err
		}
		return r.Hub(name).Control(opts), nil
	case "redis", "rediss":
		if err := checkPort(raw); err != nil {
			return nil, err
		}
		return stemredis.OpenControl(ctx, raw, opts)
	case "sqlite":
		return stemsqlite.OpenControl(ctx, raw, opts)
	case "postgres", "postgresql":
		if err := checkPort(raw); err != nil {
			return nil, err
		}
		return stempostgres.OpenControl(ctx, raw, opts)
	}
	return nil, unknown("control transport", raw, "sqlite://, postgres://, memory://, redis://, rediss://")
}

// URLs are the backend URLs a program uses, with where each came from.
// Build them with Resolve (or FromEnv) rather than by hand.
type URLs struct {
	Broker, Results, Revokes string
	// RevokesFrom names where the revoke store URL came from: a variable
	// (STEM_REVOKE_STORE_URL, or the one it fell back to), a flag
	// ("--revoke-store", "--backend", "--broker") or "default".
	RevokesFrom string
	// BrokerFrom and ResultsFrom name where the broker's and the result
	// backend's URLs came from, as RevokesFrom does.
	BrokerFrom, ResultsFrom string
}

// FromEnv resolves the URLs from the environment alone (getenv is
// os.Getenv in programs): Resolve without flags. The broker comes from
// STEM_BROKER_URL, else Default(getenv); the result backend from
// STEM_RESULT_BACKEND_URL, else the broker's URL; the revoke store from
// STEM_REVOKE_STORE_URL, then STEM_RESULT_BACKEND_URL, then
// STEM_BROKER_URL, else Default(getenv).
func FromEnv(getenv func(string) string) URLs {
	return Resolve(getenv, Flags{})
}

// Check reports a combination of URLs that cannot keep stem's promises, as
// a configuration error (matching stemdriver.ErrBadConfig): today a
// memory:// revoke store beside a broker of any other scheme. Such a store
// lives and dies with one process, while the broker reaches workers of
// other processes: they would get revokes that no store holds, and a
// worker that starts later, restarts or re-syncs would never see them. The
// CLI runs Check before `worker revoke` and `worker start` open anything.
func (u URLs) Check() error {
	if scheme(u.Revokes) == "memory" && scheme(u.Broker) != "memory" {
		return badConfig("stem: revoke store %s (from %s) is in-process only and cannot be durable beside broker %s: "+
			"workers would get revokes that no store holds, and workers that start later or re-sync would never see them; "+
			"point %s (or --revoke-store) at a shared store: sqlite://PATH, postgres://, redis://, rediss:// or file://PATH",
			Redact(u.Revokes), u.RevokesFrom, Redact(u.Broker), EnvRevokeStore)
	}
	return nil
}

// Stores describes the URLs for logs and stats, redacted; the control
// transport is the broker's URL.
func (u URLs) Stores() stemtype.StoreInfo {
	return stemtype.StoreInfo{Broker: Redact(u.Broker), Results: Redact(u.Results), Revokes: Redact(u.Revokes), Control: Redact(u.Broker)}
}

// redacted replaces secrets in Redact's results.
const redacted = "xxxxx"

// Redact returns raw with its secrets replaced, for messages and logs,
// whatever raw looks like:
//
//   - a URL that parses: its password, or a lone user name (which go-redis
//     takes for a password), becomes "xxxxx";
//   - a URL that does not parse, or where an '@' shows that part of a
//     password with an unencoded '/', '?' or '#' landed in the path, query
//     or fragment: everything between "://" and the last '@' becomes
//     "xxxxx"; with no '@', only the scheme is kept ("scheme://<unparsable
//     URL>");
//   - a string without a scheme (a file path): everything up to its last
//     '@', if any, becomes "xxxxx", and so does the value of each
//     key=value pair whose key names a secret (a libpq connection string
//     such as "host=db password=p" given where a URL belongs);
//   - in a URL, the value of a query parameter whose name says it holds a
//     secret (password, token, secret, auth, ...) becomes "xxxxx", and so
//     does everything after it, where an unencoded '&' or '#' may have
//     carried the rest of the value.
func Redact(raw string) string {
	i := strings.Index(raw, "://")
	if i <= 0 || !validScheme(raw[:i]) {
		return redactKeyValues(redactUserinfo(raw))
	}
	// The query first: an '@' in a secret value would otherwise be taken
	// for the end of the user information. Then again, for a query the
	// first pass could not find behind an unencoded '?' in a password.
	return redactQuery(redactUserinfo(redactQuery(raw)))
}

// keyValueSecret matches a key=value pair of a libpq-style connection
// string ("host=db user=u password='p w'") whose key names a secret.
var keyValueSecret = regexp.MustCompile(`(?i)([a-z_]*(?:pass|pwd|secret|token|auth|credential)[a-z_]*)\s*=\s*(?:'(?:[^'\\]|\\.)*'?|\S*)`)

// redactKeyValues replaces the values of the secret key=value pairs of a
// string that is not a URL (a libpq connection string given where a URL
// belongs) with "xxxxx".
func redactKeyValues(s string) string {
	return keyValueSecret.ReplaceAllString(s, "${1}="+redacted)
}

// redactUserinfo is Redact without the query rule.
func redactUserinfo(raw string) string {
	i := strings.Index(raw, "://")
	if i <= 0 || !validScheme(raw[:i]) {
		if j := strings.LastIndex(raw, "@"); j >= 0 {
			return redacted + raw[j:]
		}
		return raw
	}
	rest := raw[i+len("://"):]
	u, err := url.Parse(raw)
	if err == nil && !strings.Contains(u.Opaque+u.Host+u.Path+u.RawQuery+u.Fragment, "@") {
		if u.User == nil {
			return raw
		}
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), redacted)
		} else {
			u.User = url.User(redacted)
		}
		return u.String()
	}
	if j := strings.LastIndex(rest, "@"); j >= 0 {
		return raw[:i] + "://" + redacted + rest[j:]
	}
	return raw[:i] + "://<unparsable URL>"
}

// secretWords are parts of query parameter names whose values are secrets.
var secretWords = []string{"pass", "pwd", "secret", "token", "auth", "credential"}

// secretParam reports whether a query parameter's name says that its value
// is a secret.
func secretParam(name string) bool {
	if n, err := url.QueryUnescape(name); err == nil {
		name = n
	}
	name = strings.ToLower(name)
	return slices.ContainsFunc(secretWords, func(w string) bool { return strings.Contains(name, w) })
}

// redactQuery replaces the value of the first secret query parameter of a
// URL whose user information is already redacted, and all that follows it,
// with "xxxxx".
func redactQuery(s string) string {
	q := strings.IndexByte(s, '?')
	if q < 0 {
		return s
	}
	for pos := q + 1; pos <= len(s); {
		param := s[pos:]
		end := strings.IndexAny(param, "&;#")
		if end >= 0 {
			param = param[:end]
		}
		if name, _, ok := strings.Cut(param, "="); ok && secretParam(name) {
			return s[:pos] + name + "=" + redacted
		}
		if end < 0 || s[pos+end] == '#' {
			break
		}
		pos += end + 1
	}
	return s
}

// validScheme reports whether s is a URL scheme (RFC 3986: a letter, then
// letters, digits, '+', '-' or '.').
func validScheme(s string) bool {
	for k, c := range s {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case k > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return s != ""
}
