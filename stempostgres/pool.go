package stempostgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stem-go/stem/stemdriver"
)

// shared is what every role opened on one URL in one process shares: the
// connection pool, the schema's queries, and the LISTEN connection. It is
// reference-counted: the last role's Close closes it.
type shared struct {
	key      string
	pool     *pgxpool.Pool
	schema   string
	shown    string
	password string
	q        *queries
	lis      *listener
	hub      *brokerHub
	notes    *notifier
	refs     int // guarded by registry.mu
}

// registry holds the process's shared pools by URL (without stem's
// options) and schema.
var registry = struct {
	mu    sync.Mutex
	pools map[string]*shared
	// opening serialises the first open of a key, so that concurrent
	// opens share one pool and migrate once.
	opening map[string]chan struct{}
}{pools: make(map[string]*shared), opening: make(map[string]chan struct{})}

// acquire returns the shared pool of cfg, connecting, checking the server
// and migrating the schema on its first use in the process.
func acquire(ctx context.Context, cfg *config) (*shared, error) {
	for {
		registry.mu.Lock()
		if s := registry.pools[cfg.key]; s != nil {
			s.refs++
			registry.mu.Unlock()
			return s, nil
		}
		if wait := registry.opening[cfg.key]; wait != nil {
			registry.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, fmt.Errorf("stem: postgres at %s: open: %w", cfg.shown, ctx.Err())
			}
		}
		done := make(chan struct{})
		registry.opening[cfg.key] = done
		registry.mu.Unlock()

		s, err := connect(ctx, cfg)
		registry.mu.Lock()
		delete(registry.opening, cfg.key)
		close(done)
		if err != nil {
			registry.mu.Unlock()
			return nil, err
		}
		s.refs = 1
		registry.pools[cfg.key] = s
		registry.mu.Unlock()
		return s, nil
	}
}

// connect opens the pool, checks that the server answers, migrates the
// schema and starts the listener.
func connect(ctx context.Context, cfg *config) (*shared, error) {
	if cfg.plaintext {
		cfg.logger.Warn("stem: postgres: the URL lets the connection to a remote host fall back to plaintext; set sslmode=require (or verify-full) to insist on TLS",
			"url", cfg.shown)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg.pool)
	if err != nil {
		return nil, cfg.errorf(err, "open")
	}
	c, err := pool.Acquire(ctx)
	if err != nil {
		pool.Close()
		return nil, cfg.openError(err)
	}
	err = migrateConn(ctx, c, cfg)
	c.Release()
	if err != nil {
		pool.Close()
		return nil, err
	}
	s := &shared{
		key:      cfg.key,
		pool:     pool,
		schema:   cfg.schema,
		shown:    cfg.shown,
		password: cfg.password,
		q:        newQueries(cfg.schema),
		hub:      newBrokerHub(),
		notes:    newNotifier(pool, cfg.logger),
	}
	s.lis = newListener(cfg.connConfig(), cfg.logger, cfg.shown, cfg.password)
	return s, nil
}

// release drops one reference to s, closing it with the last.
func (s *shared) release() {
	registry.mu.Lock()
	s.refs--
	last := s.refs == 0
	if last {
		delete(registry.pools, s.key)
	}
	registry.mu.Unlock()
	if last {
		s.notes.close()
		s.lis.close()
		s.pool.Close()
	}
}

// openError classifies an error of the first connection: credentials or a
// database the server refuses are configuration errors.
func (c *config) openError(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "28000" && strings.HasPrefix(pe.Message, "no pg_hba.conf entry"):
			// Not the credentials: no line of pg_hba.conf admits this
			// user, database, address and encryption.
			why := "the server's pg_hba.conf admits no such connection"
			if strings.Contains(pe.Message, "no encryption") {
				why += " without TLS: set sslmode=require (or verify-full)"
			}
			return stemdriver.BadConfig(c.errorf(err, "%s", why))
		}
		switch pe.Code {
		case "28P01", "28000": // invalid_password, invalid_authorization_specification
			return stemdriver.BadConfig(c.errorf(err, "the server refused the URL's credentials"))
		case "3D000": // invalid_catalog_name
			return stemdriver.BadConfig(c.errorf(err, "no such database"))
		case "42704", "22023": // undefined_object, invalid_parameter_value: an unknown or bad URL option
			return stemdriver.BadConfig(c.errorf(err, "the server refused a URL option"))
		}
	}
	return c.errorf(err, "cannot connect")
}

// errorf wraps err with what failed and where, the password scrubbed.
func (c *config) errorf(err error, format string, args ...any) error {
	return scrub(fmt.Errorf("stem: postgres at %s: %s: %w", c.shown, fmt.Sprintf(format, args...), err), c.password)
}

// defaultOptions are the options of Migrate: the default namespace, the
// default logger.
func defaultOptions() stemdriver.Options { return stemdriver.Options{} }

// role is what every role embeds: the shared pool, what to print, whether
// Close was called.
type role struct {
	s      *shared
	name   string // "broker", "results", "revokes" or "control"
	ns     string
	log    *slog.Logger
	closed atomic.Bool
	once   sync.Once
}

// openShared parses url and acquires its shared pool.
func openShared(ctx context.Context, url string, opts stemdriver.Options) (*shared, *config, error) {
	cfg, err := parseConfig(url, opts)
	if err != nil {
		return nil, nil, err
	}
	s, err := acquire(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	return s, cfg, nil
}

// errorf wraps err with what failed, naming the role and the server; it
// turns errors of a closed role into stemdriver.ErrClosed.
func (r *role) errorf(err error, format string, args ...any) error {
	if r.closed.Load() && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		err = stemdriver.ErrClosed
	}
	wrapped := scrub(fmt.Errorf("stem: postgres %s at %s: %s: %w", r.name, r.s.shown, fmt.Sprintf(format, args...), err), r.s.password)
	// A refused privilege is a configuration error, which no retry can
	// mend (the CLI exits 78 on it, not 69).
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42501" { // insufficient_privilege
		return stemdriver.BadConfig(wrapped)
	}
	return wrapped
}

// checkOpen returns an error matching stemdriver.ErrClosed after Close.
func (r *role) checkOpen() error {
	if r.closed.Load() {
		return fmt.Errorf("stem: postgres %s at %s: %w", r.name, r.s.shown, stemdriver.ErrClosed)
	}
	return nil
}

// closeRole marks r closed and releases its shared pool once.
func (r *role) closeRole() {
	r.once.Do(func() {
		r.closed.Store(true) // may be set already by the role's Close
		r.s.release()
	})
}

// db is what a role's statements run on: the pool, or a caller's
// transaction (InTx).
type db interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
	Begin(ctx context.Context) (pgx.Tx, error)
}

var (
	_ db = (*pgxpool.Pool)(nil)
	_ db = (pgx.Tx)(nil)
)
