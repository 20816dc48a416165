//go:build unix

package stemsqlite

import (
	"os"
	"syscall"
)

// fileKey identifies a file whatever path names it: device and inode.
type fileKey struct{ dev, ino uint64 }

// keyOf returns fi's key, and false where it has none.
func keyOf(fi os.FileInfo) (fileKey, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileKey{}, false
	}
	return fileKey{dev: uint64(st.Dev), ino: uint64(st.Ino)}, true
}
