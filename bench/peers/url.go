package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemurl"
)

// openSystem opens cfg's system on cfg.URL.
func openSystem(ctx context.Context, cfg config, p *probe, logger *slog.Logger) (system, error) {
	switch cfg.System {
	case "stem":
		return openStem(ctx, cfg.URL, p, logger)
	case "river":
		return openRiver(ctx, cfg, p, logger)
	case "asynq", "ceiling":
		if b, err := backendOf(cfg.URL); err != nil || b != "redis" {
			return nil, fmt.Errorf("-system %s runs on redis:// only, not %s", cfg.System, stemurl.Redact(cfg.URL))
		}
		if cfg.System == "asynq" {
			return openAsynq(ctx, cfg.URL, p, logger)
		}
		return openCeiling(ctx, cfg.URL, p)
	}
	return nil, fmt.Errorf("unknown system %q", cfg.System)
}

// backendOf names the backend of a URL by its scheme: "redis" (redis://,
// rediss://), "postgres" (postgres://, postgresql://), "sqlite", "memory".
func backendOf(raw string) (string, error) {
	i := strings.Index(raw, "://")
	if i <= 0 {
		return "", fmt.Errorf("URL %s has no scheme (want redis://, postgres://, sqlite://PATH or memory://)", stemurl.Redact(raw))
	}
	switch scheme := strings.ToLower(raw[:i]); scheme {
	case "redis", "rediss":
		return "redis", nil
	case "postgres", "postgresql":
		return "postgres", nil
	default:
		return scheme, nil
	}
}

// freshSQLite makes a new directory beside the path of the sqlite:// URL
// raw (in the temporary directory when the path is empty) and returns the
// URL of a database file in it, by its absolute path, built by format from the file's path and
// raw's query ("" or "?..."), and a function that removes the directory
// with the file and its -wal and -shm companions.
func freshSQLite(raw string, format func(path, query string) string) (string, func() error, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", nil, fmt.Errorf("bad sqlite URL %s: %w", stemurl.Redact(raw), err)
	}
	path := u.Host + u.Path // sqlite://rel/path.db has host "rel"
	parent := os.TempDir()
	if path != "" {
		parent = filepath.Dir(path)
	}
	if parent, err = filepath.Abs(parent); err != nil {
		return "", nil, fmt.Errorf("sqlite URL %s: %w", stemurl.Redact(raw), err)
	}
	dir, err := os.MkdirTemp(parent, "peers-")
	if err != nil {
		return "", nil, fmt.Errorf("sqlite URL %s: make a fresh directory: %w", stemurl.Redact(raw), err)
	}
	query := ""
	if u.RawQuery != "" {
		query = "?" + u.RawQuery
	}
	file := filepath.Join(dir, "bench.sqlite3")
	return format(file, query), func() error { return os.RemoveAll(dir) }, nil
}

// freshPostgresSchema returns raw with search_path set to a new schema's
// name (stem creates the schema when it migrates), and a function that
// drops that schema.
func freshPostgresSchema(ctx context.Context, raw string) (string, func() error, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", nil, fmt.Errorf("bad postgres URL %s: %w", stemurl.Redact(raw), err)
	}
	schema := "peers_" + stem.NewTaskID()[:12]
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	drop := func() error {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, raw)
		if err != nil {
			return fmt.Errorf("drop schema %s: connect to %s: %w", schema, stemurl.Redact(raw), err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE"); err != nil {
			return fmt.Errorf("drop schema %s: %w", schema, err)
		}
		return nil
	}
	return u.String(), drop, nil
}
