//go:build unix

package isolated

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
)

// setProcAttr puts the child in a process group of its own: a Ctrl-C at the
// worker's terminal reaches the worker alone (whose warm shutdown then
// governs the children), and killing the group also kills processes the
// task started.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// signalGroup sends s to the process group of the child p leads: SIGTERM
// for sigTerm, SIGKILL for sigKill. The caller guarantees that p was not
// reaped yet, so that its pid, which is the group's id, was not reused.
func signalGroup(p *os.Process, s sig) {
	n := syscall.SIGTERM
	if s == sigKill {
		n = syscall.SIGKILL
	}
	if err := syscall.Kill(-p.Pid, n); err != nil {
		_ = p.Signal(n) // not a group leader (cannot happen with setProcAttr)
	}
}

// endOwnGroup sends SIGTERM to the other processes of the child's process
// group, that is the processes its tasks started and did not move to a
// group of their own, when the child leads that group (as a Pool starts
// it). The child ignores SIGTERM from then on: it is about to exit.
func endOwnGroup() {
	pid := os.Getpid()
	if syscall.Getpgrp() != pid {
		return // not started by a Pool: the group is someone else's
	}
	signal.Ignore(syscall.SIGTERM)
	_ = syscall.Kill(-pid, syscall.SIGTERM)
}

// protocolFiles moves the protocol streams off the standard descriptors:
// it returns new descriptors for the pipes on 0 and 1 (closed on exec, so
// processes the task starts do not hold them), then points descriptor 0 at
// the null device and descriptor 1 at descriptor 2. Task code that reads
// os.Stdin sees end of file and task code that prints to os.Stdout writes
// to the worker's log, instead of corrupting the protocol.
func protocolFiles() (in, out *os.File, err error) {
	inFD, err := syscall.Dup(0)
	if err != nil {
		return nil, nil, fmt.Errorf("stem: isolated: dup stdin: %w", err)
	}
	syscall.CloseOnExec(inFD)
	outFD, err := syscall.Dup(1)
	if err != nil {
		syscall.Close(inFD)
		return nil, nil, fmt.Errorf("stem: isolated: dup stdout: %w", err)
	}
	syscall.CloseOnExec(outFD)
	in, out = os.NewFile(uintptr(inFD), "stem-isolated-in"), os.NewFile(uintptr(outFD), "stem-isolated-out")
	null, err := os.Open(os.DevNull)
	if err != nil {
		in.Close()
		out.Close()
		return nil, nil, fmt.Errorf("stem: isolated: open %s: %w", os.DevNull, err)
	}
	defer null.Close()
	if err := dup2(int(null.Fd()), 0); err != nil {
		in.Close()
		out.Close()
		return nil, nil, fmt.Errorf("stem: isolated: redirect stdin: %w", err)
	}
	if err := dup2(2, 1); err != nil {
		in.Close()
		out.Close()
		return nil, nil, fmt.Errorf("stem: isolated: redirect stdout: %w", err)
	}
	return in, out, nil
}
