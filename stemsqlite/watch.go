package stemsqlite

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// watcher tells waiters that the file may have changed. It reads PRAGMA
// data_version on one connection of its own that never writes: the value
// changes whenever another connection, of this process or any other,
// commits a change to the file. It reads it only while someone waits (a
// blocked Claim, a subscription, a Replies call), when told the WAL file
// was written (see walNotifier) or on a timer; writes of this process also
// wake waiters at once through notify.
type watcher struct {
	logger *slog.Logger
	db     *sql.DB
	conn   *sql.Conn
	wal    *walNotifier // nil: poll every pollInterval

	mu      sync.Mutex
	ch      chan struct{} // closed and replaced on every change
	waiters int
	kick    chan struct{} // one token: waiters went from 0 to 1
}

// newWatcher opens the watcher's connection to path and, when notifier is
// set and the platform has one, a WAL notifier of real, path with its
// symlinks resolved (where SQLite keeps the WAL file).
func newWatcher(ctx context.Context, path, real string, logger *slog.Logger, notifier bool) (*watcher, error) {
	db, err := sql.Open("sqlite", dsn(path, "_pragma", "query_only(1)"))
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(ctx)
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	w := &watcher{logger: logger, db: db, conn: conn, ch: make(chan struct{}), kick: make(chan struct{}, 1)}
	if notifier {
		if w.wal, err = newWALNotifier(real); err != nil {
			logger.Debug("stem: sqlite: change watcher: polling data_version", "path", path, "reason", err)
		}
	}
	return w, nil
}

// wait registers a waiter and returns the channel closed at the next change.
// The caller reads the data it waits on after wait, so that a change
// committed after that read closes the channel it holds; done unregisters.
func (w *watcher) wait() (ch <-chan struct{}, done func()) {
	w.mu.Lock()
	w.waiters++
	if w.waiters == 1 {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
	ch = w.ch
	w.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			w.mu.Lock()
			w.waiters--
			w.mu.Unlock()
		})
	}
}

// current returns the channel closed at the next change, for a waiter
// already registered with wait.
func (w *watcher) current() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ch
}

// notify wakes every waiter.
func (w *watcher) notify() {
	w.mu.Lock()
	close(w.ch)
	w.ch = make(chan struct{})
	w.mu.Unlock()
}

func (w *watcher) idle() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.waiters == 0
}

// version reads PRAGMA data_version.
func (w *watcher) version(ctx context.Context) (int64, error) {
	var v int64
	err := w.conn.QueryRowContext(context.WithoutCancel(ctx), "PRAGMA data_version").Scan(&v)
	return v, err
}

// run reads data_version while someone waits, and notifies on every
// change, until ctx ends. With a WAL notifier (Linux) it reads it when the
// WAL file is written and then every burstInterval for burstLen (the event
// may come before the commit is visible), and every slowPoll otherwise, in
// case an event was missed; without one, every pollInterval. The last value
// seen is kept across idle spells, so a change made while nobody waited
// wakes the first waiter after it (at worst once for nothing).
func (w *watcher) run(ctx context.Context) {
	last, err := w.version(ctx)
	if err != nil && ctx.Err() == nil {
		w.logger.Warn("stem: sqlite: change watcher: read data_version", "error", err)
	}
	var events <-chan struct{}
	if w.wal != nil {
		events = w.wal.C()
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var burstUntil time.Time
	for {
		if w.idle() {
			select {
			case <-ctx.Done():
				return
			case <-w.kick:
			}
		} else {
			wait := pollInterval
			if events != nil {
				wait = slowPoll
				if time.Now().Before(burstUntil) {
					wait = burstInterval
				}
			}
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			case <-events:
				burstUntil = time.Now().Add(burstLen)
				timer.Stop()
			}
		}
		v, err := w.version(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// Wake everyone: they read the file themselves and report
			// what fails there.
			w.logger.Debug("stem: sqlite: change watcher: read data_version", "error", err)
			w.notify()
			continue
		}
		if v != last {
			last = v
			w.notify()
		}
	}
}

// close closes the watcher's connection; run must have returned.
func (w *watcher) close() error {
	err := w.conn.Close()
	if cerr := w.db.Close(); err == nil {
		err = cerr
	}
	if w.wal != nil {
		if cerr := w.wal.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("change watcher: %w", err)
	}
	return nil
}
