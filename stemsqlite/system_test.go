package stemsqlite

import (
	"context"
	"testing"

	"github.com/stem-go/stem/internal/systemtest"
)

// TestSystem runs the system suite on one file for the whole run (every
// case has a namespace of its own); a second file is the other scope of the
// scope isolation case.
func TestSystem(t *testing.T) {
	dir := t.TempDir()
	here, elsewhere := "sqlite://"+dir+"/system.db", "sqlite://"+dir+"/elsewhere.db"
	systemtest.Run(t, systemtest.Harness{
		Open:          func(t *testing.T, ns string) systemtest.Roles { return roles(t, here, ns) },
		OpenElsewhere: func(t *testing.T, ns string) systemtest.Roles { return roles(t, elsewhere, ns) },
	})
}

// roles opens the four roles of namespace on the file of u and closes them
// when t ends.
func roles(t *testing.T, u, ns string) systemtest.Roles {
	t.Helper()
	ctx := context.Background()
	return systemtest.Roles{
		Broker:  opened[*Broker](t)(OpenBroker(ctx, u, testOpts(ns))),
		Results: opened[*Results](t)(OpenResults(ctx, u, testOpts(ns))),
		Revokes: opened[*Revokes](t)(OpenRevokes(ctx, u, testOpts(ns))),
		Control: opened[*Control](t)(OpenControl(ctx, u, testOpts(ns))),
	}
}
