//go:build unix

package demotasks

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/stem-go/stem"
)

// crashHard is demo.crash-isolated's "kill" and "garbage" modes.
func crashHard(tc *stem.TaskContext, mode string) error {
	pid := os.Getpid()
	if mode == "kill" {
		fmt.Fprintf(os.Stderr, "demo.crash-isolated: killing itself (pid %d)\n", pid)
		return syscall.Kill(pid, syscall.SIGKILL)
	}
	// garbage: junk on every pipe above the standard descriptors. The
	// read end of a pipe refuses the write; the protocol's write end
	// takes it, and the worker must see a broken frame, not a result.
	dir := "/proc/self/fd"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return stem.NoRetry(fmt.Errorf("demo.crash-isolated: mode garbage needs %s: %w", dir, err))
	}
	junk := []byte("\xff\xfe not a frame \x00\x01" + strings.Repeat("garbage ", 64))
	wrote := 0
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		if target, err := os.Readlink(filepath.Join(dir, e.Name())); err != nil || !strings.HasPrefix(target, "pipe:") {
			continue
		}
		if n, err := syscall.Write(fd, junk); err == nil && n > 0 {
			wrote++
		}
	}
	fmt.Fprintf(os.Stderr, "demo.crash-isolated: wrote garbage on %d pipes (pid %d)\n", wrote, pid)
	<-tc.Done() // the worker reads the junk and stops this child
	return tc.Err()
}
