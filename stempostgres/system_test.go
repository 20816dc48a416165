package stempostgres_test

import (
	"testing"

	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/internal/testutil"
)

// TestSystem runs the system suite in a schema of its own; the other scope
// of the scope isolation case is a second schema of the same database,
// where NOTIFY, which is per database, is the channel that could cross.
func TestSystem(t *testing.T) {
	u := testutil.PostgresSchema(t)
	other := testutil.PostgresSchema(t)
	systemtest.Run(t, systemtest.Harness{
		Open:          func(t *testing.T, namespace string) systemtest.Roles { return roles(t, u, namespace) },
		OpenElsewhere: func(t *testing.T, namespace string) systemtest.Roles { return roles(t, other, namespace) },
	})
}
