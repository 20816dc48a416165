package stemredis

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// DefaultResultTTL is how long results are kept when the URL sets no
// result_ttl.
const DefaultResultTTL = 24 * time.Hour

// config is what a URL and the driver options resolve to.
type config struct {
	redis *redis.Options
	// blockOpts are the options as parsed, for the blocker's own client:
	// a copy taken before NewClient initialised (and registered handlers
	// on) the role's options.
	blockOpts redis.Options
	addr      string // host:port, safe to print
	namespace string
	logger    *slog.Logger
	resultTTL time.Duration
}

// The query options stemredis adds to those of go-redis's redis.ParseURL.
const (
	optResultTTL     = "result_ttl"
	optTLSCA         = "tls_ca"
	optTLSCert       = "tls_cert"
	optTLSKey        = "tls_key"
	optTLSServerName = "tls_server_name"
)

// parseConfig resolves a redis:// or rediss:// URL and the driver options.
//
// The URL is redis://[user:password@]host[:port][/db][?option=value...]; the
// options are go-redis's (dial_timeout, read_timeout, pool_size, protocol,
// skip_verify for rediss, ...) plus result_ttl (a Go duration; 0 keeps
// results forever), tls_ca, tls_cert, tls_key (PEM files) and
// tls_server_name (rediss only). Unknown options are an error. Error
// messages never include the password, and every error matches
// stemdriver.ErrBadConfig: no retry can mend a URL.
func parseConfig(rawURL string, opts stemdriver.Options) (*config, error) {
	u, err := url.Parse(rawURL)
	if err != nil || strings.Contains(u.Host+u.Path+u.RawQuery+u.Fragment, "@") {
		// The parser's reasons quote parts of the URL, and a password with
		// an unencoded '/', '?', '#' or '%' ends up in them, or in the
		// host, path, query or fragment of a URL that did parse (an '@'
		// there gives it away): say nothing of the URL.
		return nil, badConfig("stem: redis: invalid URL (percent-encode '/', '?', '#', '%%' and '@' in user names and passwords)")
	}
	shown := shownURL(u)
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return nil, badConfig("stem: redis: URL %s: scheme must be redis or rediss", shown)
	}

	cfg := &config{resultTTL: DefaultResultTTL, namespace: opts.Namespace, logger: opts.Logger}
	if cfg.namespace == "" {
		cfg.namespace = stemtype.DefaultNamespace
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}

	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		// url.Query would drop what it cannot parse without a word.
		return nil, badConfig("stem: redis: URL %s: the query does not parse (percent-encode ';', '%%' and '&' in values)", shown)
	}
	take := func(name string) (string, bool) {
		v, ok := q[name]
		if !ok {
			return "", false
		}
		q.Del(name)
		if len(v) != 1 {
			return "", true
		}
		return v[0], true
	}
	if v, ok := take(optResultTTL); ok {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return nil, badConfig("stem: redis: URL %s: option %s=%q is not a non-negative duration such as 24h", shown, optResultTTL, v)
		}
		cfg.resultTTL = d
	}
	caFile, hasCA := take(optTLSCA)
	certFile, hasCert := take(optTLSCert)
	keyFile, hasKey := take(optTLSKey)
	serverName, hasServerName := take(optTLSServerName)
	if u.Scheme != "rediss" && (hasCA || hasCert || hasKey || hasServerName) {
		return nil, badConfig("stem: redis: URL %s: TLS options need the rediss scheme", shown)
	}
	if hasCert != hasKey {
		return nil, badConfig("stem: redis: URL %s: %s and %s go together", shown, optTLSCert, optTLSKey)
	}

	u.RawQuery = q.Encode()
	ro, err := redis.ParseURL(u.String())
	if err != nil {
		// go-redis's reasons quote the database or an option's value: parts
		// of the URL that, with no '@' in them, hold no password. Still,
		// show none that contains the user name or password.
		reason := strings.TrimPrefix(err.Error(), "redis: ")
		if containsUserinfo(reason, u.User) {
			reason = "invalid database number or option value"
		}
		return nil, badConfig("stem: redis: URL %s: %s", shown, reason)
	}
	if ro.DB < 0 {
		return nil, badConfig("stem: redis: URL %s: invalid database number %d: must not be negative", shown, ro.DB)
	}
	// Maintenance notifications (a Redis Enterprise feature stem does not
	// use) are off: in auto mode go-redis v9.23 rewrites the mode in the
	// Options that every dedicated Conn shares, under each Conn's own lock,
	// on the first handshake with a server that lacks the feature, a data
	// race between a broker's concurrent blocking claims
	// (TestBlockingClaimsOfFreshBrokerDoNotRace).
	ro.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	cfg.redis = ro
	cfg.addr = ro.Addr

	if ro.TLSConfig != nil {
		if hasServerName {
			ro.TLSConfig.ServerName = serverName
		}
		if hasCA {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return nil, stemdriver.BadConfig(fmt.Errorf("stem: redis: URL %s: option %s: %w", shown, optTLSCA, err))
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, badConfig("stem: redis: URL %s: option %s: no PEM certificate in %s", shown, optTLSCA, caFile)
			}
			ro.TLSConfig.RootCAs = pool
		}
		if hasCert {
			pair, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, stemdriver.BadConfig(fmt.Errorf("stem: redis: URL %s: options %s and %s: %w", shown, optTLSCert, optTLSKey, err))
			}
			ro.TLSConfig.Certificates = []tls.Certificate{pair}
		}
	}
	return cfg, nil
}

// badConfig returns a configuration error (matching
// stemdriver.ErrBadConfig) with a formatted message.
func badConfig(format string, args ...any) error {
	return stemdriver.BadConfig(fmt.Errorf(format, args...))
}

// containsUserinfo reports whether s contains the user name or password of
// user, if any.
func containsUserinfo(s string, user *url.Userinfo) bool {
	if user == nil {
		return false
	}
	pw, _ := user.Password()
	for _, secret := range []string{user.Username(), pw} {
		if secret != "" && strings.Contains(s, secret) {
			return true
		}
	}
	return false
}

// shownURL describes u for messages: scheme, host and database, never the
// user name, password or query. parseConfig calls it only for a URL with
// no '@' outside its user information, where no part of a password can
// have landed in the host or path.
func shownURL(u *url.URL) string {
	host := u.Hostname()
	if p := u.Port(); p != "" {
		host += ":" + p
	}
	return u.Scheme + "://" + host + u.Path
}

// open parses rawURL, connects and pings the server.
func open(ctx context.Context, rawURL string, opts stemdriver.Options) (*redis.Client, *config, error) {
	cfg, err := parseConfig(rawURL, opts)
	if err != nil {
		return nil, nil, err
	}
	// The first ping dials once and does not retry, so that an unreachable
	// server is reported at once (the CLI's exit 69) rather than after the
	// client's dial and command retries; the client then keeps its retries
	// for transient failures later on.
	probeOpts := *cfg.redis
	probeOpts.MaxRetries, probeOpts.DialerRetries = -1, 1
	probe := redis.NewClient(&probeOpts)
	err = probe.Ping(ctx).Err()
	_ = probe.Close()
	switch {
	case err == nil:
	case redis.IsAuthError(err) || redis.IsPermissionError(err):
		// The server answered: a wrong user name or password is a
		// configuration error, not an outage (a retry cannot mend it).
		return nil, nil, stemdriver.BadConfig(fmt.Errorf("stem: redis: %s (db %d) refused the URL's credentials: %w", cfg.addr, cfg.redis.DB, err))
	case redis.HasErrorPrefix(err, "DB index is out of range"), redis.HasErrorPrefix(err, "invalid DB index"):
		return nil, nil, stemdriver.BadConfig(fmt.Errorf("stem: redis: %s has no database %d: %w", cfg.addr, cfg.redis.DB, err))
	default:
		return nil, nil, fmt.Errorf("stem: redis: cannot reach %s (db %d): %w", cfg.addr, cfg.redis.DB, err)
	}
	cfg.blockOpts = *cfg.redis
	return redis.NewClient(cfg.redis), cfg, nil
}
