package stemsqlite

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/stem-go/stem/stemdriver"
)

// role is what every driver of this package holds: its share of the file's
// handle, its namespace and its closed state.
type role struct {
	st     *store
	ns     string
	logger *slog.Logger
	name   string // "broker", "results", "revokes", "control"

	closed      chan struct{}
	closeOnce   sync.Once
	releaseOnce sync.Once
	closeErr    error
}

// open resolves url and opts and returns a role on the file's shared
// handle.
func open(ctx context.Context, url string, opts stemdriver.Options, name string) (*role, *config, error) {
	cfg, err := parseConfig(url, opts)
	if err != nil {
		return nil, nil, err
	}
	st, err := acquire(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	return newRole(st, cfg, name), cfg, nil
}

// newRole returns a role of st, which it releases when closed.
func newRole(st *store, cfg *config, name string) *role {
	return &role{st: st, ns: cfg.namespace, logger: cfg.logger, name: name, closed: make(chan struct{})}
}

// check returns an error matching stemdriver.ErrClosed once the role is
// closed, ctx's error once ctx ended, and an error naming the file when
// the file was deleted or replaced while open (see store.gone).
func (r *role) check(ctx context.Context, op string) error {
	select {
	case <-r.closed:
		return fmt.Errorf("stem: sqlite %s %s: %w", r.name, op, stemdriver.ErrClosed)
	default:
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := r.st.gone(); err != nil {
		return fmt.Errorf("stem: sqlite %s %s: %w", r.name, op, err)
	}
	return nil
}

// isClosed reports whether the role was closed.
func (r *role) isClosed() bool {
	select {
	case <-r.closed:
		return true
	default:
		return false
	}
}

// errorf wraps err with the role, the file and the operation.
func (r *role) errorf(err error, format string, args ...any) error {
	return fmt.Errorf("stem: sqlite %s (%s): %s: %w", r.name, r.st.path, fmt.Sprintf(format, args...), err)
}

// markClosed marks the role closed: its operations return
// stemdriver.ErrClosed from now on.
func (r *role) markClosed() { r.closeOnce.Do(func() { close(r.closed) }) }

// close marks the role closed and releases its share of the handle, once.
func (r *role) close() error {
	r.markClosed()
	r.releaseOnce.Do(func() { r.closeErr = r.st.release() })
	return r.closeErr
}
