//go:build !unix

package demotasks

import (
	"fmt"

	"github.com/stem-go/stem"
)

// crashHard is demo.crash-isolated's "kill" and "garbage" modes, which
// need a Unix system.
func crashHard(_ *stem.TaskContext, mode string) error {
	return stem.NoRetry(fmt.Errorf("demo.crash-isolated: mode %q needs a Unix system", mode))
}
