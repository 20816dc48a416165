package tasks

import (
	"strings"

	"github.com/stem-go/stem"
)

// ReportArgs are the arguments of reports.build.
type ReportArgs struct {
	Chunks []string `json:"chunks"`
}

// RegisterReport registers reports.build as an inline task: without
// Isolated, the worker runs it in its own process.
func RegisterReport(reg *stem.Registry) {
	stem.Register(reg, "reports.build", BuildReport, stem.TaskOptions{MaxRetries: 0})
}

// BuildReport processes one chunk at a time. It runs in the worker's
// process, so a terminate revoke cancels tc at once, and the next
// Heartbeat returns an error matching stem.ErrTaskRevoked.
func BuildReport(tc *stem.TaskContext, a ReportArgs) (any, error) {
	lines := 0
	for _, chunk := range a.Chunks {
		lines += strings.Count(chunk, "\n") + 1 // the work of one chunk
		if err := tc.Heartbeat(); err != nil {
			return nil, err // revoked with --terminate: unwind now
		}
	}
	return map[string]int{"chunks": len(a.Chunks), "lines": lines}, nil
}
