package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"
	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemurl"

	_ "modernc.org/sqlite" // database/sql driver "sqlite" for riversqlite
)

// The River job kinds of the scenarios.
type (
	riverNoopArgs struct {
		N int `json:"n"`
	}
	riverPickupArgs struct{}
	riverLongArgs   struct{}
)

// Kind implements river.JobArgs.
func (riverNoopArgs) Kind() string { return "peers_noop" }

// Kind implements river.JobArgs.
func (riverPickupArgs) Kind() string { return "peers_pickup" }

// Kind implements river.JobArgs.
func (riverLongArgs) Kind() string { return "peers_long" }

type riverNoopWorker struct {
	river.WorkerDefaults[riverNoopArgs]
	p *probe
}

func (w *riverNoopWorker) Work(context.Context, *river.Job[riverNoopArgs]) error {
	w.p.noop()
	return nil
}

type riverPickupWorker struct {
	river.WorkerDefaults[riverPickupArgs]
	p *probe
}

func (w *riverPickupWorker) Work(context.Context, *river.Job[riverPickupArgs]) error {
	w.p.pickedUp()
	return nil
}

type riverLongWorker struct {
	river.WorkerDefaults[riverLongArgs]
	p *probe
}

func (w *riverLongWorker) Work(ctx context.Context, j *river.Job[riverLongArgs]) error {
	w.p.longTask(ctx, strconv.FormatInt(j.ID, 10))
	return ctx.Err()
}

// riverSystem is River with one client that inserts and works, on a
// driver with transaction type TTx.
type riverSystem[TTx any] struct {
	backend     string
	schema      string // Postgres only: the fresh schema
	concurrency int
	client      *river.Client[TTx]
	started     bool
	closeDB     func(context.Context) error // drops the schema or removes the file, closes the pool
}

// openRiver opens River on cfg.URL: Postgres in a fresh schema, or SQLite
// in a fresh file, migrated with rivermigrate.
func openRiver(ctx context.Context, cfg config, p *probe, logger *slog.Logger) (system, error) {
	backend, err := backendOf(cfg.URL)
	if err != nil {
		return nil, err
	}
	switch backend {
	case "postgres":
		return openRiverPostgres(ctx, cfg, p, logger)
	case "sqlite":
		return openRiverSQLite(ctx, cfg, p, logger)
	}
	return nil, fmt.Errorf("river runs on postgres:// or sqlite:// URLs, not %s", stemurl.Redact(cfg.URL))
}

// openRiverPostgres opens a pgxpool with its defaults, creates a fresh
// schema and migrates River into it.
func openRiverPostgres(ctx context.Context, cfg config, p *probe, logger *slog.Logger) (system, error) {
	pool, err := pgxpool.New(ctx, cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("river: open %s: %w", stemurl.Redact(cfg.URL), err)
	}
	schema := "peers_" + stem.NewTaskID()[:12]
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		pool.Close()
		return nil, fmt.Errorf("river: create schema %s on %s: %w", schema, stemurl.Redact(cfg.URL), err)
	}
	closeDB := func(ctx context.Context) error {
		_, err := pool.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE")
		pool.Close()
		if err != nil {
			return fmt.Errorf("river: drop schema %s: %w", schema, err)
		}
		return nil
	}
	s, err := newRiverSystem[pgx.Tx]("postgres", riverpgxv5.New(pool), schema, cfg, p, logger)
	if err != nil {
		return nil, errors.Join(err, closeDB(ctx))
	}
	s.closeDB = closeDB
	return s, nil
}

// openRiverSQLite opens a fresh database file through database/sql with
// one connection, as River's SQLite documentation recommends, and
// migrates River into it.
func openRiverSQLite(ctx context.Context, cfg config, p *probe, logger *slog.Logger) (system, error) {
	dsn, cleanup, err := freshSQLite(cfg.URL, func(path, query string) string { return path + query })
	if err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("river: open %s: %w", dsn, err), cleanup())
	}
	db.SetMaxOpenConns(1)
	closeDB := func(context.Context) error { return errors.Join(db.Close(), cleanup()) }
	s, err := newRiverSystem[*sql.Tx]("sqlite", riversqlite.New(db), "", cfg, p, logger)
	if err != nil {
		return nil, errors.Join(err, closeDB(ctx))
	}
	s.closeDB = closeDB
	return s, nil
}

// newRiverSystem migrates River up in schema and builds its client, with
// River's defaults but the queue's MaxWorkers (the concurrency) and, when
// set, FetchCooldown.
func newRiverSystem[TTx any](backend string, driver riverdriver.Driver[TTx], schema string, cfg config, p *probe, logger *slog.Logger) (*riverSystem[TTx], error) {
	ctx := context.Background()
	m, err := rivermigrate.New(driver, &rivermigrate.Config{Schema: schema, Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("river: migrator: %w", err)
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return nil, fmt.Errorf("river: migrate: %w", err)
	}
	workers := river.NewWorkers()
	river.AddWorker(workers, &riverNoopWorker{p: p})
	river.AddWorker(workers, &riverPickupWorker{p: p})
	river.AddWorker(workers, &riverLongWorker{p: p})
	client, err := river.NewClient(driver, &river.Config{
		FetchCooldown: cfg.FetchCooldown, // zero: River's default
		Logger:        riverLogger(logger),
		Queues:        map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: cfg.Concurrency}},
		Schema:        schema,
		Workers:       workers,
	})
	if err != nil {
		return nil, fmt.Errorf("river: client: %w", err)
	}
	return &riverSystem[TTx]{backend: backend, schema: schema, concurrency: cfg.Concurrency, client: client}, nil
}

// riverLogger is logger at error level and above: River logs every job
// cancelled remotely, the cancel scenario's purpose, as a warning.
func riverLogger(logger *slog.Logger) *slog.Logger {
	return slog.New(minLevel{logger.Handler(), slog.LevelError})
}

// minLevel is a slog.Handler that drops records below level.
type minLevel struct {
	slog.Handler
	level slog.Level
}

// Enabled implements slog.Handler.
func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.level && h.Handler.Enabled(ctx, l)
}

// WithAttrs implements slog.Handler.
func (h minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(as), h.level}
}

// WithGroup implements slog.Handler.
func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{h.Handler.WithGroup(name), h.level}
}

// Backend implements system.
func (s *riverSystem[TTx]) Backend() string { return s.backend }

// EnqueueNoops implements system with Client.InsertMany.
func (s *riverSystem[TTx]) EnqueueNoops(ctx context.Context, n, batch int) error {
	for done := 0; done < n; {
		params := make([]river.InsertManyParams, min(batch, n-done))
		for i := range params {
			params[i] = river.InsertManyParams{Args: riverNoopArgs{N: 1}}
		}
		if _, err := s.client.InsertMany(ctx, params); err != nil {
			return err
		}
		done += len(params)
	}
	return nil
}

// Start implements system: the client starts working its queue.
func (s *riverSystem[TTx]) Start(ctx context.Context, c int) error {
	if c != s.concurrency {
		return fmt.Errorf("river client built for concurrency %d, started with %d", s.concurrency, c)
	}
	if s.started {
		return errors.New("river client already started")
	}
	if err := s.client.Start(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	s.started = true
	return nil
}

// EnqueuePickup implements system.
func (s *riverSystem[TTx]) EnqueuePickup(ctx context.Context) error {
	_, err := s.client.Insert(ctx, riverPickupArgs{}, nil)
	return err
}

// EnqueueLong implements system.
func (s *riverSystem[TTx]) EnqueueLong(ctx context.Context) (string, error) {
	res, err := s.client.Insert(ctx, riverLongArgs{}, nil)
	if err != nil {
		return "", err
	}
	return strconv.FormatInt(res.Job.ID, 10), nil
}

// Cancel implements system with Client.JobCancel.
func (s *riverSystem[TTx]) Cancel(ctx context.Context, id string) error {
	jid, err := strconv.ParseInt(id, 10, 64)
	if err != nil {
		return fmt.Errorf("river job id %q: %w", id, err)
	}
	_, err = s.client.JobCancel(ctx, jid)
	return err
}

// Stop implements system: a soft stop, which waits for running jobs and
// their completions.
func (s *riverSystem[TTx]) Stop(ctx context.Context) error {
	if !s.started {
		return nil
	}
	s.started = false
	return s.client.Stop(ctx)
}

// CheckDrained implements system: n no-op jobs are completed.
func (s *riverSystem[TTx]) CheckDrained(ctx context.Context, n int) error {
	params := river.NewJobListParams().Kinds(riverNoopArgs{}.Kind()).States(rivertype.JobStateCompleted).First(10000)
	count := 0
	for {
		res, err := s.client.JobList(ctx, params)
		if err != nil {
			return fmt.Errorf("list completed jobs: %w", err)
		}
		count += len(res.Jobs)
		if len(res.Jobs) == 0 || res.LastCursor == nil {
			break
		}
		params = params.After(res.LastCursor)
	}
	if count != n {
		return fmt.Errorf("%d no-op jobs completed after the drain, want %d", count, n)
	}
	return nil
}

// Close implements system.
func (s *riverSystem[TTx]) Close(ctx context.Context) error {
	return errors.Join(s.Stop(ctx), s.closeDB(ctx))
}

// EnqueueNoop implements system with Client.Insert.
func (s *riverSystem[TTx]) EnqueueNoop(ctx context.Context) error {
	_, err := s.client.Insert(ctx, riverNoopArgs{N: 1}, nil)
	return err
}

// Outcome implements system: JobCancel ends a running job cancelled, once
// its work function returns.
func (s *riverSystem[TTx]) Outcome(ctx context.Context, id string) (bool, error) {
	jid, err := strconv.ParseInt(id, 10, 64)
	if err != nil {
		return false, fmt.Errorf("river job id %q: %w", id, err)
	}
	deadline := time.Now().Add(roundTimeout)
	for {
		job, err := s.client.JobGet(ctx, jid)
		if err != nil {
			return false, err
		}
		if job.State != rivertype.JobStateRunning {
			return job.State == rivertype.JobStateCancelled, nil
		}
		if time.Now().After(deadline) {
			return false, fmt.Errorf("job %d still running after %s", jid, roundTimeout)
		}
		if err := pace(ctx, time.Now(), time.Millisecond); err != nil {
			return false, err
		}
	}
}
