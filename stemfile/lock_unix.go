//go:build unix

package stemfile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

const (
	lockShared    = syscall.LOCK_SH
	lockExclusive = syscall.LOCK_EX
)

// flock takes a shared or exclusive flock on f, waiting until it is free or
// ctx ends. flock has no timeout, so a busy lock is retried with backoff from
// 1 ms up to 20 ms.
func flock(ctx context.Context, f *os.File, how int) error {
	delay := time.Millisecond
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, syscall.EINTR):
			continue
		case !errors.Is(err, syscall.EWOULDBLOCK):
			return fmt.Errorf("stem: lock %s: %w", f.Name(), err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("stem: waiting for lock %s: %w", f.Name(), context.Cause(ctx))
		case <-t.C:
		}
		delay = min(2*delay, 20*time.Millisecond)
	}
}

// funlock releases the flock on f.
func funlock(f *os.File) error {
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_UN); err != nil {
		return fmt.Errorf("stem: unlock %s: %w", f.Name(), err)
	}
	return nil
}

// lockSupported reports whether this platform has flock.
const lockSupported = true

// fileOwner returns the owner of fi's file.
func fileOwner(fi os.FileInfo) (uid, gid int, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return int(st.Uid), int(st.Gid), true
}
