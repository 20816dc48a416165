//go:build !unix

package isolated

import (
	"os"
	"os/exec"
)

// setProcAttr leaves the child in the worker's process group: only unix
// systems have process groups.
func setProcAttr(cmd *exec.Cmd) {}

// signalGroup kills the child, whatever s: without unix signals there is
// no gentler way, and without process groups no group to signal.
func signalGroup(p *os.Process, s sig) { _ = p.Kill() }

// endOwnGroup does nothing: only unix systems have process groups.
func endOwnGroup() {}

// protocolFiles returns the standard streams unchanged: outside unix, task
// code must not use os.Stdin and os.Stdout in the child.
func protocolFiles() (in, out *os.File, err error) { return os.Stdin, os.Stdout, nil }
