package isolated_test

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"unsafe"

	"github.com/stem-go/stem/isolated"
)

// TestChildEndsItsGroupWhenTheWorkerIsGone drives a child by hand, as a
// worker would, in a process group of its own, and then closes its stdin
// without killing anything, as a worker killed with SIGKILL does: the
// process its task started ends with it.
func TestChildEndsItsGroupWhenTheWorkerIsGone(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), isolated.EnvChild+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	read := func() map[string]any {
		t.Helper()
		var hdr [4]byte
		if _, err := io.ReadFull(stdout, hdr[:]); err != nil {
			t.Fatalf("read a frame: %v", err)
		}
		buf := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(stdout, buf); err != nil {
			t.Fatalf("read a frame: %v", err)
		}
		var m map[string]any
		if err := json.Unmarshal(buf, &m); err != nil {
			t.Fatalf("frame %s: %v", buf, err)
		}
		return m
	}
	if m := read(); m["type"] != "hello" {
		t.Fatalf("first frame %v, want a hello", m)
	}
	b, _ := json.Marshal(map[string]any{"type": "run", "run": 1, "task": "test.grandchild", "taskId": "g"})
	if _, err := stdin.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...)); err != nil {
		t.Fatal(err)
	}
	m := read()
	res, _ := m["result"].(map[string]any)
	pid, _ := res["pid"].(float64)
	if m["type"] != "result" || pid == 0 {
		t.Fatalf("frame %v, want test.grandchild's result", m)
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Errorf("child: %v, want exit status 0", err)
	}
	awaitExit(t, int(pid))
}

// awaitExit waits, up to waitTimeout, for the process pid to exit (it may
// stay a zombie until its parent reaps it), and fails t if it does not;
// it then kills the process, which the test made a task start.
func awaitExit(t *testing.T, pid int) {
	t.Helper()
	const sysPidfdOpen = 434 // the same on every linux architecture
	fd, _, e := syscall.Syscall(sysPidfdOpen, uintptr(pid), 0, 0)
	switch {
	case e == syscall.ESRCH:
		return // gone, and reaped
	case e == syscall.ENOSYS:
		t.Skip("no pidfd_open on this kernel")
	case e != 0:
		t.Fatalf("pidfd_open %d: %v", pid, e)
	}
	defer syscall.Close(int(fd))
	// A pidfd turns readable when its process exits.
	var set syscall.FdSet
	bits := int(8 * unsafe.Sizeof(set.Bits[0]))
	set.Bits[int(fd)/bits] |= 1 << (int(fd) % bits)
	tv := syscall.NsecToTimeval(waitTimeout.Nanoseconds())
	for {
		n, err := syscall.Select(int(fd)+1, &set, nil, nil, &tv)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("select on the pidfd of %d: %v", pid, err)
		}
		if n == 0 {
			t.Errorf("process %d still runs %s after its parent ended", pid, waitTimeout)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		return
	}
}
