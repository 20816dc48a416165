package stemsqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/stem-go/stem/stemdriver"
)

// Tuning of the shared handle.
const (
	// busyTimeout is how long SQLite itself waits for another connection's
	// lock before a statement returns SQLITE_BUSY (the driver's busy
	// handler gives up earlier when the call's context ends). A write that
	// still finds the file busy is retried by writeTx.
	busyTimeout = 5 * time.Second
	// readConns is the size of the read pool: reads never take the write
	// lock in WAL mode, so a few run beside the writer.
	readConns = 4
	// pollInterval is how often the watcher reads PRAGMA data_version
	// while someone waits for a change, where it has no WAL notifier.
	pollInterval = 4 * time.Millisecond
	// With a WAL notifier, the watcher reads data_version every
	// burstInterval for burstLen after the WAL file was written, and
	// every slowPoll otherwise (a safety net: an idle process wakes a few
	// times a second, not 250).
	burstInterval = 2 * time.Millisecond
	burstLen      = 20 * time.Millisecond
	slowPoll      = 250 * time.Millisecond
	// pruneInterval is how often the shared handle deletes expired rows.
	pruneInterval = time.Minute
	// pruneBatch bounds the rows one prune statement deletes, so that the
	// write lock is never held long.
	pruneBatch = 1000
	// replyKeep is how long control replies are kept (the contract asks
	// for at least a minute).
	replyKeep = 5 * time.Minute
	// controlKeep is how long control messages are kept: a subscription
	// reads new ones within milliseconds, so this only bounds the file.
	controlKeep = 5 * time.Minute
)

// sqliteHeader starts every SQLite database file.
var sqliteHeader = []byte("SQLite format 3\x00")

// store is the one handle of a database file in this process, shared by
// every role opened on the file: one write pool of one connection, a read
// pool, the change watcher's connection and the pruner.
type store struct {
	path   string // absolute
	logger *slog.Logger
	shared bool   // registered in stores
	mapKey string // its key in stores: path with its symlinks resolved

	write *sql.DB // one connection: in-process writers queue in Go, not on the file lock
	read  *sql.DB // query_only connections for reads
	watch *watcher
	wlock *writeLock           // queues the writers of every stem process on the file
	stmts map[string]*sql.Stmt // writeQueries, prepared on the write connection; read-only after open

	cancel context.CancelFunc
	done   sync.WaitGroup

	key   fileKey // the file's identity when opened
	keyed bool    // key is set (Unix)

	refs    int    // guarded by stores.mu
	untrack func() // counts the handle out of openFiles; guarded by stores.mu

	clockMu   sync.Mutex
	lastClock int64 // the last publish order stamp given, ns
}

// stores holds the shared handle of every file open in the process, by
// absolute path with symlinks resolved (canonicalPath).
var stores = struct {
	mu sync.Mutex
	m  map[string]*store
}{m: make(map[string]*store)}

// acquire returns the shared handle of the file of cfg, opening it on first
// use, and counts one more user of it.
func acquire(ctx context.Context, cfg *config) (*store, error) {
	abs, err := absPath(cfg.path)
	if err != nil {
		return nil, err
	}
	key := canonicalPath(abs)
	stores.mu.Lock()
	defer stores.mu.Unlock()
	if s := stores.m[key]; s != nil {
		s.refs++
		return s, nil
	}
	s, err := openStore(ctx, abs, cfg)
	if err != nil {
		return nil, err
	}
	s.shared = true
	s.refs = 1
	s.mapKey = key
	stores.m[key] = s
	return s, nil
}

// canonicalPath returns the absolute path abs with its symlinks resolved,
// those of its directory alone when the file does not exist yet, so that
// every path of one file gives one key of stores.
func canonicalPath(abs string) string {
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		return r
	}
	if d, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
		return filepath.Join(d, filepath.Base(abs))
	}
	return abs
}

// openPrivate opens a handle of the file of cfg that no other open shares,
// as another process would. Tests use it to run two "processes" in one.
func openPrivate(ctx context.Context, cfg *config) (*store, error) {
	abs, err := absPath(cfg.path)
	if err != nil {
		return nil, err
	}
	stores.mu.Lock()
	defer stores.mu.Unlock()
	s, err := openStore(ctx, abs, cfg)
	if err != nil {
		return nil, err
	}
	s.refs = 1
	return s, nil
}

// retain counts one more user of s.
func (s *store) retain() {
	stores.mu.Lock()
	s.refs++
	stores.mu.Unlock()
}

// release counts one user of s less, and closes s when it was the last.
func (s *store) release() error {
	stores.mu.Lock()
	s.refs--
	last := s.refs == 0
	if last && s.shared {
		delete(stores.m, s.mapKey)
	}
	if !last {
		stores.mu.Unlock()
		return nil
	}
	// Closed under the lock, so that no open of the file checks its
	// header while this handle's descriptors are still open.
	defer stores.mu.Unlock()
	err := s.close()
	if s.untrack != nil {
		s.untrack()
		s.untrack = nil
	}
	return err
}

// absPath resolves p against the working directory.
func absPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("stem: sqlite: resolve path %s: %w", p, err)
	}
	return abs, nil
}

// openFiles counts the handles of this process open on each file, by
// device and inode, guarded by stores.mu.
var openFiles = map[fileKey]int{}

// checkFile reports a path that cannot be a database: a missing parent
// directory, a directory, or a file that is neither empty nor SQLite. It
// only reads, so a file it refuses is left untouched. It reads the header
// only of a file that no handle of this process has open: closing any
// descriptor of a file drops every POSIX lock the process holds on it,
// SQLite's included. stores.mu must be held.
func checkFile(path string) error {
	dir := filepath.Dir(path)
	if fi, err := os.Stat(dir); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("stem: sqlite: database %s: directory %s does not exist (create it first)", path, dir)
		}
		return fmt.Errorf("stem: sqlite: database %s: %w", path, err)
	} else if !fi.IsDir() {
		return fmt.Errorf("stem: sqlite: database %s: %s is not a directory", path, dir)
	}
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil // created on open
	}
	if err != nil {
		return fmt.Errorf("stem: sqlite: database %s: %w", path, err)
	}
	if fi.IsDir() {
		return badConfig("stem: sqlite: database %s is a directory", path)
	}
	if k, ok := keyOf(fi); ok && openFiles[k] > 0 {
		return nil // open here already, so SQLite
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("stem: sqlite: database %s: %w", path, err)
	}
	defer f.Close()
	head := make([]byte, len(sqliteHeader))
	n, err := io.ReadFull(f, head)
	switch {
	case n == 0 && (err == io.EOF || err == nil):
		return nil // an empty file is an empty database
	case err != nil && err != io.ErrUnexpectedEOF:
		return fmt.Errorf("stem: sqlite: database %s: %w", path, err)
	case !bytes.Equal(head[:n], sqliteHeader):
		return stemdriver.BadConfig(fmt.Errorf("stem: sqlite: %s: %w (left untouched)", path, errNotSQLite))
	}
	return nil
}

// track counts s among the handles open on its file (once the file
// exists), and returns the function that counts it out. stores.mu must be
// held by both.
func (s *store) track() {
	fi, err := os.Stat(s.path)
	if err != nil {
		return
	}
	if k, ok := keyOf(fi); ok {
		s.key, s.keyed = k, true
		openFiles[k]++
		s.untrack = func() {
			if openFiles[k]--; openFiles[k] <= 0 {
				delete(openFiles, k)
			}
		}
	}
}

// errFileGone says that the database file was deleted, or replaced by
// another file, while this process had it open.
var errFileGone = errors.New("was deleted or replaced while open: this process still holds the old file, which no new process sees; restart it")

// gone returns an error when the path of s no longer names the file s
// opened (it was deleted, or replaced by another file): every operation
// on the old file would be invisible to processes that open the path now.
// A failure to look is not reported: the operations report their own.
func (s *store) gone() error {
	if !s.keyed {
		return nil
	}
	fi, err := os.Stat(s.path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("stem: sqlite: database %s %w", s.path, errFileGone)
		}
		return nil
	}
	if k, ok := keyOf(fi); ok && k != s.key {
		return fmt.Errorf("stem: sqlite: database %s %w", s.path, errFileGone)
	}
	return nil
}

// dsn is the modernc.org/sqlite data source name of path with the
// connection settings every connection of a handle shares.
func dsn(path string, extra ...string) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "synchronous(NORMAL)")
	for i := 0; i+1 < len(extra); i += 2 {
		q.Add(extra[i], extra[i+1])
	}
	return path + "?" + q.Encode()
}

// openStore opens path: it checks the file, switches it to WAL, migrates its
// schema and starts the watcher and the pruner.
func openStore(ctx context.Context, path string, cfg *config) (_ *store, err error) {
	logger := cfg.logger
	if err := checkFile(path); err != nil {
		return nil, err
	}
	s := &store{path: path, logger: logger}
	defer func() {
		if err != nil {
			s.closeDBs()
		}
	}()
	// Every write transaction begins IMMEDIATE: it takes the write lock
	// at BEGIN, so that two transactions never both hold a read snapshot
	// and then deadlock upgrading it (SQLITE_BUSY that no wait can mend).
	s.write, err = sql.Open("sqlite", dsn(path, "_txlock", "immediate"))
	if err != nil {
		return nil, fmt.Errorf("stem: sqlite: open %s: %w", path, err)
	}
	s.write.SetMaxOpenConns(1)
	s.write.SetMaxIdleConns(1)
	s.write.SetConnMaxIdleTime(0)
	s.write.SetConnMaxLifetime(0)

	if err := s.retryBusy(ctx, logger, "set WAL mode", func() error {
		var mode string
		if err := s.write.QueryRowContext(ctx, "PRAGMA journal_mode=WAL").Scan(&mode); err != nil {
			return err
		}
		if mode != "wal" {
			return fmt.Errorf("journal mode is %q after asking for wal", mode)
		}
		return nil
	}); err != nil {
		return nil, s.openErr(err)
	}
	// SQLite follows symlinks: the WAL file lives beside the real file,
	// so the lock file and the WAL watch go there too, and processes that
	// open the file by different paths share them.
	real := realPath(path)
	if s.wlock, err = newWriteLock(real); err != nil {
		return nil, s.openErr(err)
	}
	if err := s.migrate(ctx, logger); err != nil {
		return nil, s.openErr(err)
	}
	s.stmts = make(map[string]*sql.Stmt, len(writeQueries))
	for _, q := range writeQueries {
		st, err := s.write.PrepareContext(ctx, q)
		if err != nil {
			return nil, s.openErr(fmt.Errorf("prepare %q: %w", q, err))
		}
		s.stmts[q] = st
	}

	s.read, err = sql.Open("sqlite", dsn(path, "_pragma", "query_only(1)"))
	if err != nil {
		return nil, fmt.Errorf("stem: sqlite: open %s: %w", path, err)
	}
	s.read.SetMaxOpenConns(readConns)
	s.read.SetMaxIdleConns(readConns)

	bg, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.watch, err = newWatcher(ctx, path, real, logger, !cfg.pollOnly)
	if err != nil {
		cancel()
		return nil, s.openErr(err)
	}
	s.track()
	s.done.Go(func() { s.watch.run(bg) })
	s.done.Go(func() { s.pruneLoop(bg) })
	return s, nil
}

// realPath returns path with its symlinks resolved, as SQLite resolves
// them to place the WAL file, or path itself when that fails.
func realPath(path string) string {
	if r, err := filepath.EvalSymlinks(path); err == nil {
		return r
	}
	return path
}

// openErr words an error met while opening the file.
func (s *store) openErr(err error) error {
	if isCode(err, sqlite3.SQLITE_NOTADB) {
		return stemdriver.BadConfig(fmt.Errorf("stem: sqlite: %s: %w (left untouched)", s.path, errNotSQLite))
	}
	return fmt.Errorf("stem: sqlite: open %s: %w", s.path, err)
}

// close stops the background work and closes the pools.
func (s *store) close() error {
	if s.cancel != nil {
		s.cancel()
	}
	s.done.Wait()
	return s.closeDBs()
}

func (s *store) closeDBs() error {
	var errs []error
	for _, st := range s.stmts {
		errs = append(errs, st.Close())
	}
	if s.watch != nil {
		errs = append(errs, s.watch.close())
	}
	for _, db := range []*sql.DB{s.read, s.write} {
		if db != nil {
			errs = append(errs, db.Close())
		}
	}
	if s.wlock != nil {
		errs = append(errs, s.wlock.close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stem: sqlite: close %s: %w", s.path, err)
	}
	return nil
}

// isCode reports whether err is a SQLite error whose primary result code is
// code.
func isCode(err error, code int) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == code
}

// isBusy reports whether err says that another connection holds a lock.
func isBusy(err error) bool {
	return isCode(err, sqlite3.SQLITE_BUSY) || isCode(err, sqlite3.SQLITE_LOCKED)
}

// retryBusy runs fn until it returns something other than a busy error, or
// ctx ends. It is the one retry a driver does: waiting for another
// process's lock on the file, never retrying a failure. Each retry is
// logged at debug level.
func (s *store) retryBusy(ctx context.Context, logger *slog.Logger, op string, fn func() error) error {
	backoff := time.Millisecond
	var timer *time.Timer
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || !isBusy(err) {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (database busy: %v)", ctx.Err(), err)
		}
		logger.Debug("stem: sqlite: database busy, waiting", "path", s.path, "op", op, "attempt", attempt, "error", err)
		if timer == nil {
			timer = time.NewTimer(backoff)
			defer timer.Stop()
		} else {
			timer.Reset(backoff)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (database busy: %v)", ctx.Err(), err)
		case <-timer.C:
		}
		backoff = min(backoff*2, 50*time.Millisecond)
	}
}

// writeTx runs fn in a write transaction (BEGIN IMMEDIATE) and commits it,
// running the whole transaction again while the file is busy. It holds the
// handle's writeLock throughout, so writers of all stem processes take
// turns promptly.
func (s *store) writeTx(ctx context.Context, logger *slog.Logger, op string, fn func(tx *sql.Tx) error) error {
	unlock, err := s.wlock.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	return s.retryBusy(ctx, logger, op, func() error {
		tx, err := s.write.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if err := fn(tx); err != nil {
			_ = tx.Rollback()
			return err
		}
		return tx.Commit()
	})
}

// stamp returns a publish order stamp: the time in ns, never less than the
// last stamp this handle gave, so that the messages of one producer keep
// their order even when the wall clock steps back.
func (s *store) stamp(now time.Time) int64 {
	n := nanos(now)
	s.clockMu.Lock()
	defer s.clockMu.Unlock()
	if n < s.lastClock {
		n = s.lastClock
	}
	s.lastClock = n
	return n
}

// nanos returns t as ns since the Unix epoch, 0 for the zero time, and
// clamps other times to [1, MaxInt64] (the epoch's first ns to 2262).
func nanos(t time.Time) int64 {
	switch {
	case t.IsZero():
		return 0
	case t.Before(minTime):
		return 1
	case t.After(maxTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

var (
	minTime = time.Unix(0, 1) // earlier times are stored as 1 (long past)
	maxTime = time.Unix(0, math.MaxInt64)
)

// pruneLoop runs prune now and then every pruneInterval until ctx ends.
func (s *store) pruneLoop(ctx context.Context) {
	t := time.NewTicker(pruneInterval)
	defer t.Stop()
	for {
		if _, err := s.prune(ctx, time.Now()); err != nil && ctx.Err() == nil {
			s.logger.Warn("stem: sqlite: prune failed", "path", s.path, "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// prune deletes, in every namespace of the file, the results that expired
// by now, control messages and replies older than their keep, and expired
// presence, in small batches. It returns how many rows it deleted.
func (s *store) prune(ctx context.Context, now time.Time) (int64, error) {
	n := nanos(now)
	stmts := []struct {
		what  string
		query string
		arg   int64
	}{
		{"results", `DELETE FROM stem_results WHERE rowid IN (SELECT rowid FROM stem_results WHERE expires_at > 0 AND expires_at <= ?1 LIMIT ?2)`, n},
		{"control messages", `DELETE FROM stem_control WHERE seq IN (SELECT seq FROM stem_control WHERE created_at <= ?1 LIMIT ?2)`, n - int64(controlKeep)},
		{"replies", `DELETE FROM stem_replies WHERE seq IN (SELECT seq FROM stem_replies WHERE created_at <= ?1 LIMIT ?2)`, n - int64(replyKeep)},
		{"presence", `DELETE FROM stem_presence WHERE rowid IN (SELECT rowid FROM stem_presence WHERE expires_at <= ?1 LIMIT ?2)`, n},
	}
	var total int64
	for _, st := range stmts {
		for {
			var deleted int64
			err := s.writeTx(ctx, s.logger, "prune "+st.what, func(tx *sql.Tx) error {
				res, err := tx.ExecContext(ctx, st.query, st.arg, pruneBatch)
				if err != nil {
					return err
				}
				deleted, err = res.RowsAffected()
				return err
			})
			if err != nil {
				return total, fmt.Errorf("stem: sqlite: prune %s of %s: %w", st.what, s.path, err)
			}
			total += deleted
			if deleted < pruneBatch {
				break
			}
		}
	}
	return total, nil
}

// writeQueries are the statements of the write paths, prepared once on the
// write connection when the handle opens: parsing SQL is a large part of a
// small transaction's cost (a third of an Announce's).
var writeQueries []string

// wq registers q among writeQueries and returns it.
func wq(q string) string {
	writeQueries = append(writeQueries, q)
	return q
}

// txPrepare returns q as a statement of tx: the prepared one when q is a
// write query, else q prepared on tx. Either is closed with tx.
func (s *store) txPrepare(ctx context.Context, tx *sql.Tx, q string) (*sql.Stmt, error) {
	if st := s.stmts[q]; st != nil {
		return tx.StmtContext(ctx, st), nil
	}
	return tx.PrepareContext(ctx, q)
}

// txExec runs q with args in tx.
func (s *store) txExec(ctx context.Context, tx *sql.Tx, q string, args ...any) (sql.Result, error) {
	if st := s.stmts[q]; st != nil {
		return tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return tx.ExecContext(ctx, q, args...)
}

// txQuery runs q with args in tx and returns its rows.
func (s *store) txQuery(ctx context.Context, tx *sql.Tx, q string, args ...any) (*sql.Rows, error) {
	if st := s.stmts[q]; st != nil {
		return tx.StmtContext(ctx, st).QueryContext(ctx, args...)
	}
	return tx.QueryContext(ctx, q, args...)
}

// txQueryRow runs q with args in tx and returns its one row.
func (s *store) txQueryRow(ctx context.Context, tx *sql.Tx, q string, args ...any) *sql.Row {
	if st := s.stmts[q]; st != nil {
		return tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
	}
	return tx.QueryRowContext(ctx, q, args...)
}
