//go:build !unix

package stemsqlite

import "os"

// fileKey identifies a file whatever path names it; elsewhere than on Unix
// there is none (and no POSIX lock to lose by opening a file twice).
type fileKey struct{}

func keyOf(os.FileInfo) (fileKey, bool) { return fileKey{}, false }
