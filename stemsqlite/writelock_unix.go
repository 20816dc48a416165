//go:build unix

package stemsqlite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
)

// writeLock queues the writers of every process that shares a file in the
// kernel (flock on PATH-stem.lock), so that a waiting writer wakes the
// moment the lock is free. SQLite's own busy handler sleeps between tries
// (up to 100 ms a sleep), so under contention from several processes a
// writer can miss free windows again and again and wait seconds: long
// enough for a lease to lapse. The flock is held only around a write
// transaction; the SQLite lock it guards stays the authority, so a process
// that does not take the flock (another program, an older version) is
// still safe, only not queued fairly.
type writeLock struct {
	f       *os.File
	fd      int
	sem     chan struct{}  // one writer of this process at a time holds f's lock
	pending sync.WaitGroup // flock calls in flight; close waits for them
}

// openWriteLock opens (creating) the lock file beside path.
func openWriteLock(path string) (*writeLock, error) {
	f, err := os.OpenFile(path+"-stem.lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("stem: sqlite: open the write lock of %s: %w", path, err)
	}
	return &writeLock{f: f, fd: int(f.Fd()), sem: make(chan struct{}, 1)}, nil
}

// lock takes the lock, waiting until it is free or ctx ends.
func (l *writeLock) lock(ctx context.Context) error {
	select {
	case l.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	got := make(chan error, 1)
	l.pending.Add(1)
	go func() {
		defer l.pending.Done()
		for {
			err := syscall.Flock(l.fd, syscall.LOCK_EX)
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			got <- err
			return
		}
	}()
	select {
	case err := <-got:
		if err != nil {
			<-l.sem
			return fmt.Errorf("stem: sqlite: lock %s: %w", l.f.Name(), err)
		}
		return nil
	case <-ctx.Done():
		// Release the lock as soon as the flock returns, in the background.
		l.pending.Add(1)
		go func() {
			defer l.pending.Done()
			if err := <-got; err == nil {
				_ = syscall.Flock(l.fd, syscall.LOCK_UN)
			}
			<-l.sem
		}()
		return ctx.Err()
	}
}

// unlock releases the lock.
func (l *writeLock) unlock() {
	_ = syscall.Flock(l.fd, syscall.LOCK_UN)
	<-l.sem
}

// close closes the lock file, once no flock call of a cancelled lock is
// in flight.
func (l *writeLock) close() error {
	l.pending.Wait()
	return l.f.Close()
}
