package stemfile

import (
	"fmt"
	"net/url"
	"strings"
)

// PathFromURL returns the file path named by a file revoke store URL:
//
//	file:///var/lib/stem/revokes.ndjson     /var/lib/stem/revokes.ndjson
//	file://localhost/var/lib/stem/r.ndjson  /var/lib/stem/r.ndjson
//	file://revokes.ndjson                   revokes.ndjson (relative)
//	file:relative/revokes.ndjson            relative/revokes.ndjson
//	file:/abs/revokes.ndjson                /abs/revokes.ndjson
//	/var/lib/stem/revokes.ndjson            as given
//	relative/revokes.ndjson                 as given
//
// Following stem's `file://PATH` form, everything after "file://" is the
// path, so "file://revokes.ndjson" is relative to the working directory;
// only a leading "localhost/" is read as the host of RFC 8089. The path part
// of a URL is percent-decoded (write a space as %20 and a per cent sign as
// %25); a bare path is returned unchanged. A URL with a query or fragment,
// an empty path, or another scheme ("redis://...") is an error.
func PathFromURL(u string) (string, error) {
	rest, isFile := cutScheme(u)
	if !isFile {
		if i := strings.Index(u, "://"); i >= 0 {
			return "", fmt.Errorf("stem: %q is not a file revoke store URL (scheme %q)", redact(u), u[:i])
		}
		if u == "" {
			return "", fmt.Errorf("stem: empty revoke file path")
		}
		return u, nil
	}
	if strings.ContainsAny(rest, "?#") {
		return "", fmt.Errorf("stem: file URL %q: query parameters and fragments are not supported", redact(u))
	}
	if after, ok := strings.CutPrefix(rest, "//"); ok {
		rest = after
		if after, ok := strings.CutPrefix(rest, "localhost/"); ok {
			rest = "/" + after
		}
	}
	p, err := url.PathUnescape(rest)
	if err != nil {
		return "", fmt.Errorf("stem: file URL %q: %w", redact(u), err)
	}
	if p == "" {
		return "", fmt.Errorf("stem: file URL %q names no path", redact(u))
	}
	return p, nil
}

// cutScheme reports whether u starts with the file scheme (in any case) and
// returns what follows "file:".
func cutScheme(u string) (string, bool) {
	const scheme = "file:"
	if len(u) >= len(scheme) && strings.EqualFold(u[:len(scheme)], scheme) {
		return u[len(scheme):], true
	}
	return "", false
}

// redact hides the password of a URL that has one, so that an error never
// prints a secret.
func redact(u string) string {
	if !strings.Contains(u, "@") {
		return u // no user information, so no password
	}
	p, err := url.Parse(u)
	if err != nil || p.User == nil || strings.Contains(p.Opaque+p.Host+p.Path+p.RawQuery+p.Fragment, "@") {
		// Unparseable, or an "@" that url.Parse did not take for user
		// information (in "#://:pw@", all of it is a fragment), which
		// may hold a password all the same: print only the scheme.
		if i := strings.Index(u, "://"); i >= 0 {
			return u[:i] + "://..."
		}
		return "..."
	}
	return p.Redacted()
}
