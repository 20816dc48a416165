package stempostgres

import (
	"context"
	"testing"

	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/stemdriver"
)

// openRawRoles opens the four roles on u with opts, closed when t ends,
// for the tests that write raw rows and notifications through the
// drivers' own pools: the suite's roles, and the broker and control
// transport as this package's types.
func openRawRoles(t *testing.T, u string, opts stemdriver.Options) (systemtest.Roles, *Broker, *Control) {
	t.Helper()
	ctx := context.Background()
	open := func(d interface{ Close() error }, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
	}
	b, err := OpenBroker(ctx, u, opts)
	open(b, err)
	res, err := OpenResults(ctx, u, opts)
	open(res, err)
	rev, err := OpenRevokes(ctx, u, opts)
	open(rev, err)
	c, err := OpenControl(ctx, u, opts)
	open(c, err)
	return systemtest.Roles{Broker: b, Results: res, Revokes: rev, Control: c}, b, c
}
