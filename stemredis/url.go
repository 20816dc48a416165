package stemredis

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

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
// messages never include the password.
func parseConfig(rawURL string, opts stemdriver.Options) (*config, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// The parser's reasons quote parts of the URL, and a password with
		// an unencoded '/', '?' or '#' ends up in them: say nothing of it.
		return nil, errors.New("stem: redis: invalid URL (percent-encode '/', '?', '#' and '@' in user names and passwords)")
	}
	shown := shownURL(u)
	if strings.ContainsAny(u.Path+u.RawQuery+u.Fragment, "@") {
		// userinfo parsed into the path or query: part of a password is
		// where Redacted does not look.
		return nil, fmt.Errorf("stem: redis: URL %s: invalid (percent-encode '/', '?', '#' and '@' in user names and passwords)", shown)
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return nil, fmt.Errorf("stem: redis: URL %s: scheme must be redis or rediss", shown)
	}

	cfg := &config{resultTTL: DefaultResultTTL, namespace: opts.Namespace, logger: opts.Logger}
	if cfg.namespace == "" {
		cfg.namespace = stemtype.DefaultNamespace
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}

	q := u.Query()
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
			return nil, fmt.Errorf("stem: redis: URL %s: option %s=%q is not a non-negative duration such as 24h", shown, optResultTTL, v)
		}
		cfg.resultTTL = d
	}
	caFile, hasCA := take(optTLSCA)
	certFile, hasCert := take(optTLSCert)
	keyFile, hasKey := take(optTLSKey)
	serverName, hasServerName := take(optTLSServerName)
	if u.Scheme != "rediss" && (hasCA || hasCert || hasKey || hasServerName) {
		return nil, fmt.Errorf("stem: redis: URL %s: TLS options need the rediss scheme", shown)
	}
	if hasCert != hasKey {
		return nil, fmt.Errorf("stem: redis: URL %s: %s and %s go together", shown, optTLSCert, optTLSKey)
	}

	u.RawQuery = q.Encode()
	ro, err := redis.ParseURL(u.String())
	if err != nil {
		// go-redis's reasons quote parts of the URL, which may hold a
		// password; only its list of unknown option names is safe to show.
		if strings.Contains(err.Error(), "unexpected option") {
			return nil, fmt.Errorf("stem: redis: URL %s: %w", shown, err)
		}
		return nil, fmt.Errorf("stem: redis: URL %s: invalid database number or option value", shown)
	}
	cfg.redis = ro
	cfg.addr = ro.Addr

	if ro.TLSConfig != nil {
		if hasServerName {
			ro.TLSConfig.ServerName = serverName
		}
		if hasCA {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return nil, fmt.Errorf("stem: redis: URL %s: option %s: %w", shown, optTLSCA, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("stem: redis: URL %s: option %s: no PEM certificate in %s", shown, optTLSCA, caFile)
			}
			ro.TLSConfig.RootCAs = pool
		}
		if hasCert {
			pair, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, fmt.Errorf("stem: redis: URL %s: options %s and %s: %w", shown, optTLSCert, optTLSKey, err)
			}
			ro.TLSConfig.Certificates = []tls.Certificate{pair}
		}
	}
	return cfg, nil
}

// shownURL describes u for messages: scheme, host and database, never the
// user name, password or query.
func shownURL(u *url.URL) string {
	host := u.Hostname()
	if p := u.Port(); p != "" {
		host += ":" + p
	}
	if strings.Contains(u.Path, "@") {
		return u.Scheme + "://" + "(not shown)"
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
	if err != nil {
		return nil, nil, fmt.Errorf("stem: redis: cannot reach %s (db %d): %w", cfg.addr, cfg.redis.DB, err)
	}
	cfg.blockOpts = *cfg.redis
	return redis.NewClient(cfg.redis), cfg, nil
}
