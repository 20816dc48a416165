package stemsqlite

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// DefaultResultTTL is how long results are kept when the URL sets no
// result_ttl.
const DefaultResultTTL = 24 * time.Hour

// scheme is the URL scheme of this package, with its separator.
const scheme = "sqlite://"

// The query options of a sqlite:// URL.
const optResultTTL = "result_ttl"

// config is what a URL and the driver options resolve to.
type config struct {
	path      string // as given in the URL, cleaned
	namespace string
	logger    *slog.Logger
	resultTTL time.Duration
	// pollOnly makes the change watcher poll data_version without a WAL
	// notifier, as on platforms that have none (tests set it).
	pollOnly bool
}

// PathFromURL returns the file path of a sqlite:// URL, as written in it
// (a relative path stays relative, to be resolved against the working
// directory): sqlite:///var/lib/stem/stem.db gives /var/lib/stem/stem.db,
// sqlite://data/stem.db gives data/stem.db. It checks the URL's options
// too, so that a URL it accepts is one the Open functions accept. Its
// errors match stemdriver.ErrBadConfig.
func PathFromURL(rawURL string) (string, error) {
	cfg, err := parseConfig(rawURL, stemdriver.Options{})
	if err != nil {
		return "", err
	}
	return cfg.path, nil
}

// parseConfig resolves a sqlite:// URL and the driver options.
//
// The URL is sqlite://PATH[?result_ttl=DURATION]; PATH is absolute when it
// starts with '/' (sqlite:///abs/stem.db) and relative to the working
// directory otherwise (sqlite://rel/stem.db). It may be percent-encoded.
// Unknown options are an error; every error matches stemdriver.ErrBadConfig.
func parseConfig(rawURL string, opts stemdriver.Options) (*config, error) {
	shown := shownURL(rawURL)
	if !strings.HasPrefix(rawURL, scheme) {
		return nil, badConfig("stem: sqlite: URL %q: want sqlite:///absolute/path.db or sqlite://relative/path.db", shown)
	}
	rest := strings.TrimPrefix(rawURL, scheme)
	rawPath, rawQuery, _ := strings.Cut(rest, "?")
	if strings.Contains(rawPath, "#") {
		return nil, badConfig("stem: sqlite: URL %q: a path cannot hold '#' (percent-encode it as %%23)", shown)
	}
	p, err := url.PathUnescape(rawPath)
	if err != nil {
		return nil, badConfig("stem: sqlite: URL %q: bad percent-encoding in the path: %v", shown, err)
	}
	switch {
	case p == "":
		return nil, badConfig("stem: sqlite: URL %q names no file: want sqlite:///absolute/path.db or sqlite://relative/path.db", shown)
	case strings.ContainsAny(p, "?\x00"):
		return nil, badConfig("stem: sqlite: URL %q: the file path cannot contain '?' or NUL", shown)
	case strings.HasSuffix(p, "/"):
		return nil, badConfig("stem: sqlite: URL %q names a directory, not a file", shown)
	}
	cfg := &config{
		path:      filepath.Clean(filepath.FromSlash(p)),
		namespace: opts.Namespace,
		logger:    opts.Logger,
		resultTTL: DefaultResultTTL,
	}
	if cfg.namespace == "" {
		cfg.namespace = stemtype.DefaultNamespace
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, badConfig("stem: sqlite: URL %q: bad query: %v", shown, err)
	}
	for _, name := range slices.Sorted(maps.Keys(q)) { // the first unknown option by name: the same message every time
		vs := q[name]
		switch name {
		case optResultTTL:
			d, err := time.ParseDuration(vs[0])
			if len(vs) != 1 || err != nil || d < 0 {
				return nil, badConfig("stem: sqlite: URL %q: option %s=%q is not a non-negative duration such as 24h", shown, optResultTTL, vs[0])
			}
			cfg.resultTTL = d
		default:
			return nil, badConfig("stem: sqlite: URL %q: unknown option %q (known: %s)", shown, name, optResultTTL)
		}
	}
	return cfg, nil
}

// shownURL is rawURL for messages: sqlite:// takes no user name,
// password or secret option, but a URL written for another backend may
// carry them, so the user information (up to the last '@' between "://"
// and the path) becomes "xxxxx", and so does the value of every query
// option but result_ttl.
func shownURL(rawURL string) string {
	start := 0
	if i := strings.Index(rawURL, "://"); i >= 0 {
		start = i + len("://")
	}
	end := len(rawURL)
	if j := strings.IndexAny(rawURL[start:], "/?#"); j >= 0 {
		end = start + j
	}
	if at := strings.LastIndex(rawURL[start:end], "@"); at >= 0 {
		rawURL = rawURL[:start] + "xxxxx" + rawURL[start+at:]
		end = start + len("xxxxx") + (end - start - at)
	}
	q := strings.IndexByte(rawURL[end:], '?')
	if q < 0 {
		return rawURL
	}
	head, query := rawURL[:end+q], rawURL[end+q+1:]
	parts := strings.FieldsFunc(query, func(r rune) bool { return r == '&' || r == ';' })
	for k, p := range parts {
		if name, _, ok := strings.Cut(p, "="); ok && name != optResultTTL {
			parts[k] = name + "=xxxxx"
		}
	}
	return head + "?" + strings.Join(parts, "&")
}

// badConfig returns a formatted error that matches stemdriver.ErrBadConfig.
func badConfig(format string, args ...any) error {
	return stemdriver.BadConfig(fmt.Errorf(format, args...))
}

// errNotSQLite says that a file exists but is not a SQLite database.
var errNotSQLite = errors.New("not a SQLite database")
