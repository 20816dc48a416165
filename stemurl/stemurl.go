// Package stemurl opens stem's backends from URLs: the one place that knows
// every URL scheme, so that the CLI, workers and programs configure brokers,
// result backends, revoke stores and control transports the same way.
//
// Schemes:
//
//	memory://[NAME]            in-process (tests, demos, one process only)
//	redis://, rediss://        Redis (package stemredis)
//	file://PATH or a bare path newline-delimited JSON revoke store (package stemfile)
//
// An unknown scheme is an error, never a silent fallback.
package stemurl

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemfile"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemredis"
)

// Environment variables read by FromEnv.
const (
	EnvBroker      = "STEM_BROKER_URL"
	EnvResults     = "STEM_RESULT_BACKEND_URL"
	EnvRevokeStore = "STEM_REVOKE_STORE_URL"
	EnvNamespace   = "STEM_NAMESPACE"
)

// DefaultURL is the embedded default used when nothing is configured. It is
// memory:// until the SQLite backend lands: it needs no server, but only one
// process sees it.
const DefaultURL = "memory://"

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

func memoryName(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("stem: parse %s: %w", Redact(raw), err)
	}
	return u.Host + u.Path, nil
}

func unknown(role, raw string, supported string) error {
	if raw == "" {
		return fmt.Errorf("stem: no %s URL given", role)
	}
	return fmt.Errorf("stem: unsupported %s URL %q: scheme must be one of %s", role, Redact(raw), supported)
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
		return stemredis.OpenBroker(ctx, raw, opts)
	}
	return nil, unknown("broker", raw, "memory://, redis://, rediss://")
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
		return stemredis.OpenResults(ctx, raw, opts)
	}
	return nil, unknown("result backend", raw, "memory://, redis://, rediss://")
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
		return stemredis.OpenRevokes(ctx, raw, opts)
	case "file":
		path, err := stemfile.PathFromURL(raw)
		if err != nil {
			return nil, err
		}
		return stemfile.OpenRevokes(path, opts)
	case "":
		switch {
		case strings.HasPrefix(strings.ToLower(raw), "file:"):
			path, err := stemfile.PathFromURL(raw)
			if err != nil {
				return nil, err
			}
			return stemfile.OpenRevokes(path, opts)
		case strings.HasPrefix(raw, "/"), strings.HasPrefix(raw, "."), raw != "" && !strings.Contains(raw, ":"):
			// A bare path; one with a colon must start with / or . so
			// that a mistyped URL is not taken for a file name.
			return stemfile.OpenRevokes(raw, opts)
		}
	}
	return nil, unknown("revoke store", raw, "memory://, redis://, rediss://, file:// or a bare path")
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
		return stemredis.OpenControl(ctx, raw, opts)
	}
	return nil, unknown("control transport", raw, "memory://, redis://, rediss://")
}

// URLs are the backend URLs a program uses, with where each came from.
type URLs struct {
	Broker, Results, Revokes string
	// RevokesFrom names the variable (or "default") the revoke store URL
	// came from.
	RevokesFrom string
}

// FromEnv resolves the URLs from the environment (getenv is os.Getenv in
// programs): the broker from STEM_BROKER_URL, else DefaultURL; the result
// backend from STEM_RESULT_BACKEND_URL, else the broker's URL; the revoke
// store from STEM_REVOKE_STORE_URL, then STEM_RESULT_BACKEND_URL, then
// STEM_BROKER_URL, else DefaultURL.
func FromEnv(getenv func(string) string) URLs {
	u := URLs{Broker: getenv(EnvBroker), Results: getenv(EnvResults)}
	if u.Broker == "" {
		u.Broker = DefaultURL
	}
	if u.Results == "" {
		u.Results = u.Broker
	}
	u.Revokes, u.RevokesFrom = "", "default"
	for _, v := range []string{EnvRevokeStore, EnvResults, EnvBroker} {
		if s := getenv(v); s != "" {
			u.Revokes, u.RevokesFrom = s, v
			break
		}
	}
	if u.Revokes == "" {
		u.Revokes = DefaultURL
	}
	return u
}

// Redact returns raw with any password replaced by "xxxxx", for messages
// and logs.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
