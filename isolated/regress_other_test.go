//go:build !linux

package isolated_test

import "testing"

// awaitExit needs pidfd_open, which only linux has.
func awaitExit(t *testing.T, pid int) {
	t.Helper()
	t.Skip("awaiting the exit of a process that is not a child needs linux")
}
