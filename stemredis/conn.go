package stemredis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/redis/go-redis/v9"

	"github.com/stem-go/stem/stemdriver"
)

// conn is what every role holds: its own client, the server's printable
// address (host:port, never the password), and whether Close was called.
type conn struct {
	rdb    *redis.Client
	addr   string
	role   string // "broker", "results", "revokes" or "control", for messages
	log    *slog.Logger
	closed atomic.Bool
}

// errorf wraps err with what failed, naming the role and the server; it
// turns errors of a closed client into stemdriver.ErrClosed, and marks a
// refusal of the server's ACL (NOPERM) as a configuration error, which
// no retry can mend (the CLI exits 78 on it, not 69).
func (c *conn) errorf(err error, format string, args ...any) error {
	if c.closed.Load() && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		err = stemdriver.ErrClosed
	}
	wrapped := fmt.Errorf("stem: redis %s at %s: %s: %w", c.role, c.addr, fmt.Sprintf(format, args...), err)
	if isNoPerm(err) {
		return stemdriver.BadConfig(wrapped)
	}
	return wrapped
}

// isNoPerm reports whether err is the server's refusal of a command, key
// or channel the connection's ACL user may not use.
func isNoPerm(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && strings.HasPrefix(re.Error(), "NOPERM")
}

// checkOpen returns an error matching stemdriver.ErrClosed after Close.
func (c *conn) checkOpen() error {
	if c.closed.Load() {
		return fmt.Errorf("stem: redis %s at %s: %w", c.role, c.addr, stemdriver.ErrClosed)
	}
	return nil
}
