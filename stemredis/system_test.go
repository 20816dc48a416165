package stemredis_test

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemredis"
)

// TestSystem runs the system suite on the test Redis (database 15); each
// case's namespace is deleted when the case ends.
func TestSystem(t *testing.T) {
	url := testutil.NeedRedis(t)
	systemtest.Run(t, systemtest.Harness{
		Open: func(t *testing.T, namespace string) systemtest.Roles {
			testutil.CleanupNamespace(t, url, namespace) // runs after the Closes below
			ctx := context.Background()
			opts := stemdriver.Options{Namespace: namespace, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
			return systemtest.Roles{
				Broker:  opened[*stemredis.Broker](t)(stemredis.OpenBroker(ctx, url, opts)),
				Results: opened[*stemredis.Results](t)(stemredis.OpenResults(ctx, url, opts)),
				Revokes: opened[*stemredis.Revokes](t)(stemredis.OpenRevokes(ctx, url, opts)),
				Control: opened[*stemredis.Control](t)(stemredis.OpenControl(ctx, url, opts)),
			}
		},
	})
}

// opened fails t on an open error and closes the driver when t ends.
func opened[D interface{ Close() error }](t *testing.T) func(D, error) D {
	return func(d D, err error) D {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		return d
	}
}
