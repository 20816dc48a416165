//go:build !unix

package stemsqlite

import "context"

// writeLock serialises the writers of this process; across processes,
// SQLite's busy handler and writeTx's retry do the waiting (no flock here).
type writeLock struct{ sem chan struct{} }

func openWriteLock(string) (*writeLock, error) { return &writeLock{sem: make(chan struct{}, 1)}, nil }

func (l *writeLock) lock(ctx context.Context) error {
	select {
	case l.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *writeLock) unlock() { <-l.sem }

func (l *writeLock) close() error { return nil }
