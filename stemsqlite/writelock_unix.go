//go:build unix

package stemsqlite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
)

// writeLock queues the writers of every stem process on a file. SQLite's
// own wait for its write lock polls with sleeps of up to 100 ms, so under
// contention from other processes a writer may wait long after the lock
// was released, again and again (measured: 0.3-0.65 s with three busy
// worker processes). An flock on a lock file beside the database wakes the
// next waiter as soon as the holder releases it. Within the process a
// semaphore orders writers (one flock description serves them all).
type writeLock struct {
	sem chan struct{}
	f   *os.File // nil: no flock here (it failed), the semaphore alone
}

// lockSuffix names the lock file: the database's path plus this.
const lockSuffix = "-stemlock"

func newWriteLock(path string) (*writeLock, error) {
	l := &writeLock{sem: make(chan struct{}, 1)}
	f, err := os.OpenFile(path+lockSuffix, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	l.f = f
	return l, nil
}

func flock(fd uintptr, how int) error {
	for {
		err := syscall.Flock(int(fd), how)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// lock takes the lock, or returns ctx's error when ctx ends first; unlock
// releases it.
func (l *writeLock) lock(ctx context.Context) (unlock func(), err error) {
	select {
	case l.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	fd := l.f.Fd()
	err = flock(fd, syscall.LOCK_EX|syscall.LOCK_NB)
	if err == nil {
		return func() { _ = flock(fd, syscall.LOCK_UN); <-l.sem }, nil
	}
	if !errors.Is(err, syscall.EWOULDBLOCK) {
		// No flock on this file system: SQLite's own lock still
		// keeps writers apart, only less fairly.
		return func() { <-l.sem }, nil
	}
	done := make(chan error, 1)
	go func() { done <- flock(fd, syscall.LOCK_EX) }()
	select {
	case err := <-done:
		if err != nil {
			return func() { <-l.sem }, nil
		}
		return func() { _ = flock(fd, syscall.LOCK_UN); <-l.sem }, nil
	case <-ctx.Done():
		go func() {
			if <-done == nil {
				_ = flock(fd, syscall.LOCK_UN)
			}
			<-l.sem
		}()
		return nil, ctx.Err()
	}
}

// close closes the lock file, once the writer holding the lock (or an
// abandoned flock) is done. Writers after it get the semaphore alone (flock
// of a closed file fails) and then fail on the closed database.
func (l *writeLock) close() error {
	l.sem <- struct{}{}
	defer func() { <-l.sem }()
	return l.f.Close()
}
