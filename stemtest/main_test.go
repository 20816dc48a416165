package stemtest_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: a
// Worker must be stopped, and fully, by the test's cleanup.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
