package stemredis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
// turns errors of a closed client into stemdriver.ErrClosed.
func (c *conn) errorf(err error, format string, args ...any) error {
	if c.closed.Load() && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		err = stemdriver.ErrClosed
	}
	return fmt.Errorf("stem: redis %s at %s: %s: %w", c.role, c.addr, fmt.Sprintf(format, args...), err)
}

// checkOpen returns an error matching stemdriver.ErrClosed after Close.
func (c *conn) checkOpen() error {
	if c.closed.Load() {
		return fmt.Errorf("stem: redis %s at %s: %w", c.role, c.addr, stemdriver.ErrClosed)
	}
	return nil
}
