//go:build !unix

package stemsqlite

import "context"

// writeLock orders the writers of the process; between processes SQLite's
// own lock keeps them apart (there is no flock here).
type writeLock struct{ sem chan struct{} }

func newWriteLock(string) (*writeLock, error) { return &writeLock{sem: make(chan struct{}, 1)}, nil }

func (l *writeLock) lock(ctx context.Context) (func(), error) {
	select {
	case l.sem <- struct{}{}:
		return func() { <-l.sem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *writeLock) close() error { return nil }
