package testutil

import (
	"net/url"
	"strings"
)

// OtherPassword returns raw with the password of its user information
// changed, byte for byte, into another of the same shape (each letter and
// digit rotated; percent escapes and other bytes kept), and whether raw has
// a password of at least three bytes to change. A message about raw that
// keeps the password secret reads the same for both: the URL fuzz targets
// compare them, which catches a password printed whole or in part without
// mistaking "redis" in "stem: redis:" for a leak.
func OtherPassword(raw string) (string, bool) {
	i := strings.Index(raw, "://")
	if i < 0 {
		return raw, false
	}
	start := i + len("://")
	auth := raw[start:]
	if j := strings.IndexAny(auth, "/?#"); j >= 0 {
		auth = auth[:j]
	}
	at := strings.LastIndex(auth, "@")
	if at < 0 {
		return raw, false
	}
	colon := strings.IndexByte(auth[:at], ':')
	if colon < 0 || at-colon-1 < 3 {
		return raw, false
	}
	pw := []byte(auth[colon+1 : at])
	changed := false
	for k := 0; k < len(pw); k++ {
		c := pw[k]
		switch {
		case c == '%':
			k += 2 // keep the escape's hex digits
		case 'a' <= c && c <= 'z':
			pw[k], changed = 'a'+(c-'a'+7)%26, true
		case 'A' <= c && c <= 'Z':
			pw[k], changed = 'A'+(c-'A'+7)%26, true
		case '0' <= c && c <= '9':
			pw[k], changed = '0'+(c-'0'+3)%10, true
		}
	}
	if !changed {
		return raw, false
	}
	return raw[:start+colon+1] + string(pw) + raw[start+at:], true
}

// LeaksPassword reports whether two messages, about raw and about
// OtherPassword(raw), show the password: they differ, and one of them
// holds its URL's password (as written, or percent-decoded). Messages may
// differ for another reason: a reason left out because it happened to
// quote the password, as a careful parser does.
func LeaksPassword(raw, msg, other, otherMsg string) bool {
	if msg == otherMsg {
		return false
	}
	return leaks(raw, msg) || leaks(other, otherMsg)
}

// leaks reports whether msg holds the password of raw, when the rest of
// raw does not hold it too (a password "000" of a URL whose path is
// "/000000" proves nothing).
func leaks(raw, msg string) bool {
	pw := password(raw)
	start := strings.Index(raw, "://") + len("://")
	rest := raw[:start] + strings.Replace(raw[start:], pw, "", 1)
	return holds(msg, pw) && !holds(rest, pw)
}

// password returns the password of raw as OtherPassword finds it.
func password(raw string) string {
	start := strings.Index(raw, "://") + len("://")
	auth := raw[start:]
	if j := strings.IndexAny(auth, "/?#"); j >= 0 {
		auth = auth[:j]
	}
	at := strings.LastIndex(auth, "@")
	colon := strings.IndexByte(auth[:at], ':')
	return auth[colon+1 : at]
}

func holds(msg, pw string) bool {
	if strings.Contains(msg, pw) {
		return true
	}
	if dec, err := url.PathUnescape(pw); err == nil && len(dec) >= 3 && strings.Contains(msg, dec) {
		return true
	}
	return false
}
