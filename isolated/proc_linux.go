package isolated

import (
	"os"
	"syscall"
	"unsafe"
)

// waitid's idtype and options (linux/wait.h); syscall lacks P_PID.
const (
	pPID     = 1
	wExited  = 0x4
	wNoWait  = 0x1000000
	siginfoT = 128 // sizeof(siginfo_t)
)

// awaitExit blocks until the child pid has exited, without reaping it: it
// stays a zombie, so neither its pid nor its process group id can be
// reused until cmd.Wait reaps it. It returns false if it cannot wait so.
func awaitExit(pid int) bool {
	var info [siginfoT / 8]uint64
	for {
		_, _, e := syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid),
			uintptr(unsafe.Pointer(&info[0])), wExited|wNoWait, 0, 0)
		switch e {
		case 0:
			return true
		case syscall.EINTR:
			continue
		}
		return false
	}
}

// selfExe is the program a child runs by default: the worker's own
// binary through /proc/self/exe, which names the file the worker was
// started from even once a deploy replaced or removed it, so that children
// always run the worker's build. Where /proc is not mounted it falls back
// to os.Executable.
func selfExe() (string, error) {
	if _, err := os.Stat(selfExePath); err == nil {
		return selfExePath, nil
	}
	return os.Executable()
}
