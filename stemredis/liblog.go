package stemredis

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// SetLibraryLogf routes go-redis's own package-level log lines (dial
// retries, pool notices: the ones no client or context carries) to logf,
// with go-redis's format and arguments. A nil logf discards them.
//
// go-redis keeps one such logger per process, so this replaces it for every
// Redis client of the process, stem's and others'; a program's entry point
// (stemcli.Main) calls it, a library embedding stem should not.
func SetLibraryLogf(logf func(format string, v ...any)) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	redis.SetLogger(libraryLogger(logf))
}

// libraryLogger adapts a printf-style function to go-redis's logger.
type libraryLogger func(format string, v ...any)

func (l libraryLogger) Printf(_ context.Context, format string, v ...any) { l(format, v...) }
