package stempostgres_test

import (
	"context"
	"testing"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemdriver/stemdrivertest"
	"github.com/stem-go/stem/stempostgres"
)

// TestConformance runs the driver suite in a schema of its own, dropped
// when the test ends; the suite's random namespaces keep its properties
// apart inside it.
func TestConformance(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := context.Background()
	opts := func(ns string) stemdriver.Options { return stemdriver.Options{Namespace: ns, Logger: quiet()} }
	stemdrivertest.Run(t, stemdrivertest.Harness{
		Broker: func(t *testing.T, ns string) stemdriver.Broker {
			return opened[*stempostgres.Broker](t)(stempostgres.OpenBroker(ctx, u, opts(ns)))
		},
		Results: func(t *testing.T, ns string) stemdriver.ResultBackend {
			return opened[*stempostgres.Results](t)(stempostgres.OpenResults(ctx, u, opts(ns)))
		},
		Revokes: func(t *testing.T, ns string) stemdriver.RevokeStore {
			return opened[*stempostgres.Revokes](t)(stempostgres.OpenRevokes(ctx, u, opts(ns)))
		},
		Control: func(t *testing.T, ns string) stemdriver.ControlTransport {
			return opened[*stempostgres.Control](t)(stempostgres.OpenControl(ctx, u, opts(ns)))
		},
		Capabilities: stemdrivertest.Capabilities{ConditionalPut: true, FinalGet: true, PutAck: true, PendingPublish: true, RevokePublish: true, RevokeChanges: true},
	})
}
