//go:build !unix

package isolated

import (
	"os"
	"os/exec"
)

// setProcAttr leaves the child in the worker's process group: only unix
// systems have process groups.
func setProcAttr(cmd *exec.Cmd) {}

// terminate kills the child: without unix signals there is no gentler way.
func terminate(p *os.Process) { _ = p.Kill() }

// kill kills the child.
func kill(p *os.Process) { _ = p.Kill() }

// protocolFiles returns the standard streams unchanged: outside unix, task
// code must not use os.Stdin and os.Stdout in the child.
func protocolFiles() (in, out *os.File, err error) { return os.Stdin, os.Stdout, nil }
