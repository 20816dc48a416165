//go:build !unix

package stemfile

import (
	"context"
	"fmt"
	"os"
	"runtime"
)

const (
	lockShared    = 1
	lockExclusive = 2
)

// lockSupported reports whether this platform has flock.
const lockSupported = false

func errLockUnsupported() error {
	return fmt.Errorf("stem: the file revoke store needs flock, which %s lacks", runtime.GOOS)
}

func flock(context.Context, *os.File, int) error { return errLockUnsupported() }

func funlock(*os.File) error { return errLockUnsupported() }

// fileOwner is not known on this system.
func fileOwner(fi os.FileInfo) (uid, gid int, ok bool) { return 0, 0, false }
