package stemsqlite

import (
	"context"
	"testing"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemdriver/stemdrivertest"
)

// TestConformance runs the driver suite on one file of its own: every
// property has a namespace of its own, and every open is a new driver on
// the file's shared handle, closed when its test ends.
func TestConformance(t *testing.T) {
	u := "sqlite://" + t.TempDir() + "/conformance.db"
	ctx := context.Background()
	stemdrivertest.Run(t, stemdrivertest.Harness{
		Broker: func(t *testing.T, ns string) stemdriver.Broker {
			return opened[*Broker](t)(OpenBroker(ctx, u, testOpts(ns)))
		},
		Results: func(t *testing.T, ns string) stemdriver.ResultBackend {
			return opened[*Results](t)(OpenResults(ctx, u, testOpts(ns)))
		},
		Revokes: func(t *testing.T, ns string) stemdriver.RevokeStore {
			return opened[*Revokes](t)(OpenRevokes(ctx, u, testOpts(ns)))
		},
		Control: func(t *testing.T, ns string) stemdriver.ControlTransport {
			return opened[*Control](t)(OpenControl(ctx, u, testOpts(ns)))
		},
		Capabilities: stemdrivertest.Capabilities{ConditionalPut: true, FinalGet: true, RevokeChanges: true},
	})
}
