//go:build !linux

package isolated

import "os"

// awaitExit reports that this system cannot wait for a child's exit
// without reaping it: the pool then reaps it at once and sends its process
// group no signal afterwards, which leaves processes a task started
// running after its child exited on its own.
func awaitExit(pid int) bool { return false }

// selfExe is the program a child runs by default: the worker's own binary
// as os.Executable finds it. A deploy that replaces that file while the
// worker runs makes later children run the new build; the pool checks each
// child's hello against its registry, and fails tasks (to be retried)
// while they differ.
func selfExe() (string, error) { return os.Executable() }
