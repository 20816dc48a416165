package stempostgres

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// DefaultResultTTL is how long results are kept after their last write when
// the URL sets no result_ttl.
const DefaultResultTTL = 24 * time.Hour

// DefaultSchema is the schema stem's tables live in when the URL names none.
const DefaultSchema = "public"

// The query options stempostgres reads itself and hides from pgx.
const (
	optSearchPath = "search_path"
	optResultTTL  = "result_ttl"
)

// DefaultPoolMaxConns is the size of a process's pool per URL when the URL
// sets no pool_max_conns (pgx's default, the number of CPUs but at least 4,
// when that is larger): a worker claims, settles, renews leases and
// listens for control at once.
const DefaultPoolMaxConns = 10

// defaultAppName is the application_name of stem's connections when the URL
// sets none, so that an operator can find them in pg_stat_activity.
const defaultAppName = "stem"

// config is what a URL and the driver options resolve to.
type config struct {
	pool      *pgxpool.Config
	key       string // identifies the pool: the URL without stem's options, plus the schema
	schema    string // unquoted
	shown     string // the URL without password or query, safe to print
	namespace string
	logger    *slog.Logger
	resultTTL time.Duration
	password  string // to scrub from errors
	plaintext bool   // a non-loopback host may be reached without TLS
}

// parseConfig resolves a postgres:// or postgresql:// URL and the driver
// options. See the package doc for the URL's form and options. Every error
// matches stemdriver.ErrBadConfig and none contains the password.
func parseConfig(rawURL string, opts stemdriver.Options) (*config, error) {
	u, err := url.Parse(rawURL)
	if err != nil || strings.Contains(u.Host+u.Path+u.RawQuery+u.Fragment, "@") {
		// The parser's reasons quote parts of the URL, which may hold the
		// password: say nothing of the URL.
		return nil, badConfig("stem: postgres: invalid URL (percent-encode '/', '?', '#', '%%' and '@' in user names and passwords)")
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		// Not a URL of ours (a key=value connection string parses as a
		// path, password and all): show the scheme alone.
		return nil, badConfig("stem: postgres: URL with scheme %q: scheme must be postgres or postgresql (postgres://host/database; key=value connection strings are not taken)", u.Scheme)
	}
	if u.Opaque != "" {
		// postgres:key=value...: pgx would read it as a key=value
		// connection string, not as a URL.
		return nil, badConfig("stem: postgres: URL %s:...: want %s://host/database (key=value connection strings are not taken)", u.Scheme, u.Scheme)
	}
	shown := shownURL(u)
	cfg := &config{schema: DefaultSchema, shown: shown, namespace: opts.Namespace, logger: opts.Logger, resultTTL: DefaultResultTTL}
	if cfg.namespace == "" {
		cfg.namespace = stemtype.DefaultNamespace
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	if u.User != nil {
		cfg.password, _ = u.User.Password()
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		// url.Query would drop what it cannot parse, search_path
		// included, and open the public schema: another deployment's.
		return nil, badConfig("stem: postgres: URL %s: the query does not parse (percent-encode ';', '%%' and '&' in values)", shown)
	}
	if pw := q.Get("password"); pw != "" {
		cfg.password = pw
	}
	take := func(name string) (string, bool, error) {
		v, ok := q[name]
		if !ok {
			return "", false, nil
		}
		q.Del(name)
		if len(v) != 1 {
			return "", true, badConfig("stem: postgres: URL %s: option %s given %d times", shown, name, len(v))
		}
		return v[0], true, nil
	}
	if v, ok, err := take(optSearchPath); err != nil {
		return nil, err
	} else if ok {
		if err := checkSchemaName(v); err != nil {
			return nil, badConfig("stem: postgres: URL %s: option %s=%q: %v", shown, optSearchPath, v, err)
		}
		cfg.schema = v
	}
	if v, ok, err := take(optResultTTL); err != nil {
		return nil, err
	} else if ok {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return nil, badConfig("stem: postgres: URL %s: option %s=%q is not a non-negative duration such as 24h", shown, optResultTTL, v)
		}
		cfg.resultTTL = d
	}
	sslmode := q.Get("sslmode")
	u.RawQuery = q.Encode()
	connString := u.String()
	pc, err := pgxpool.ParseConfig(connString)
	if err != nil {
		reason := "invalid connection option"
		if msg := parseReason(err); msg != "" && !containsSecret(msg, cfg.password) {
			reason = msg
		}
		return nil, badConfig("stem: postgres: URL %s: %s", shown, reason)
	}
	if !q.Has("pool_max_conns") {
		pc.MaxConns = max(pc.MaxConns, DefaultPoolMaxConns)
	}
	if _, ok := pc.ConnConfig.RuntimeParams["application_name"]; !ok {
		pc.ConnConfig.RuntimeParams["application_name"] = defaultAppName
	}
	// stem qualifies every table with its schema: the session's search_path
	// is the user's business.
	cfg.pool = pc
	cfg.key = connString + "\x00" + cfg.schema
	switch sslmode {
	case "", "disable", "allow", "prefer":
		// Every host of a multi-host URL may be the one reached.
		cfg.plaintext = !loopback(pc.ConnConfig.Host)
		for _, fb := range pc.ConnConfig.Fallbacks {
			cfg.plaintext = cfg.plaintext || !loopback(fb.Host)
		}
	}
	return cfg, nil
}

// parseReason returns the reason of a pgx parse error without the
// connection string it quotes: the text after the last "`: ".
func parseReason(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, "`: "); i >= 0 {
		return msg[i+3:]
	}
	return ""
}

// checkSchemaName accepts one schema name: not empty, at most 63 bytes,
// without a comma (a search_path list) or NUL.
func checkSchemaName(s string) error {
	switch {
	case s == "":
		return errors.New("empty schema name")
	case len(s) > 63:
		return errors.New("schema name longer than 63 bytes")
	case strings.ContainsAny(s, ",\x00"):
		return errors.New("want one schema name, not a list")
	case strings.HasPrefix(s, "pg_"):
		return errors.New("schema names starting with pg_ are reserved")
	}
	return nil
}

// loopback reports whether host is a local address or a Unix socket.
func loopback(host string) bool {
	if host == "" || strings.HasPrefix(host, "/") || host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// shownURL describes u for messages: scheme, host and database, never the
// user name, password or query.
func shownURL(u *url.URL) string {
	return u.Scheme + "://" + u.Host + u.Path
}

// badConfig returns a configuration error (matching
// stemdriver.ErrBadConfig) with a formatted message.
func badConfig(format string, args ...any) error {
	return stemdriver.BadConfig(fmt.Errorf(format, args...))
}

// containsSecret reports whether s contains secret (a non-empty one).
func containsSecret(s, secret string) bool {
	return secret != "" && strings.Contains(s, secret)
}

// scrubbed is an error whose message has the password masked; it unwraps to
// the original, so errors.Is and errors.As still see it.
type scrubbed struct {
	msg string
	err error
}

func (e *scrubbed) Error() string { return e.msg }
func (e *scrubbed) Unwrap() error { return e.err }

// scrub returns err with every occurrence of password masked in its
// message.
func scrub(err error, password string) error {
	if err == nil || password == "" || !strings.Contains(err.Error(), password) {
		return err
	}
	return &scrubbed{msg: strings.ReplaceAll(err.Error(), password, "xxxxx"), err: err}
}

// connConfig returns a copy of the pool's connection settings for a
// dedicated connection (the listener).
func (c *config) connConfig() *pgx.ConnConfig {
	return c.pool.ConnConfig.Copy()
}

// SchemaFromURL returns the schema a postgres:// URL names (its
// search_path option, default DefaultSchema), checking the URL as the Open
// functions do; its errors match stemdriver.ErrBadConfig and never show the
// password. With SQL, it prints the migrations of a URL's schema.
func SchemaFromURL(rawURL string) (string, error) {
	cfg, err := parseConfig(rawURL, stemdriver.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return "", err
	}
	return cfg.schema, nil
}
