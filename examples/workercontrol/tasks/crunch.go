package tasks

import (
	"context"

	"github.com/stem-go/stem"
)

// CrunchArgs are the arguments of items.crunch.
type CrunchArgs struct {
	Items []float64 `json:"items"`
}

// RegisterCrunch registers items.crunch, an isolated, CPU-bound task.
func RegisterCrunch(reg *stem.Registry) {
	stem.Register(reg, "items.crunch", Crunch, stem.TaskOptions{Isolated: true})
}

// Crunch shows the checkpoints of a CPU-bound loop: a free look at its
// context on every item, and a heartbeat with progress every tenth.
func Crunch(tc *stem.TaskContext, a CrunchArgs) (any, error) {
	total := 0.0
	for i, x := range a.Items {
		if tc.Err() != nil { // cancelled: the cause says why
			return nil, context.Cause(tc)
		}
		total += process(x)
		if i%10 == 0 {
			if err := tc.Heartbeat(); err != nil { // revoked with --terminate
				return nil, err
			}
			if err := tc.Progress(100*float64(i)/float64(len(a.Items)), nil); err != nil {
				return nil, err
			}
		}
	}
	return total, nil
}

// process stands for the real work of one item.
func process(x float64) float64 { return x * x }
