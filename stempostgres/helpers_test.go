package stempostgres_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/isolated"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stempostgres"
)

func TestMain(m *testing.M) {
	isolated.ServeIfChild(systemtest.Registry())
	goleak.VerifyTestMain(m)
}

// quiet discards the drivers' logs, unless STEM_TEST_LOG is set.
func quiet() *slog.Logger {
	if os.Getenv("STEM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// opened fails t on an open error and closes the driver when t ends.
func opened[D interface{ Close() error }](t testing.TB) func(D, error) D {
	return func(d D, err error) D {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		return d
	}
}

// roles opens the four roles of namespace on the database and schema of u.
func roles(t testing.TB, u, namespace string) systemtest.Roles {
	t.Helper()
	ctx := context.Background()
	opts := stemdriver.Options{Namespace: namespace, Logger: quiet()}
	return systemtest.Roles{
		Broker:  opened[*stempostgres.Broker](t)(stempostgres.OpenBroker(ctx, u, opts)),
		Results: opened[*stempostgres.Results](t)(stempostgres.OpenResults(ctx, u, opts)),
		Revokes: opened[*stempostgres.Revokes](t)(stempostgres.OpenRevokes(ctx, u, opts)),
		Control: opened[*stempostgres.Control](t)(stempostgres.OpenControl(ctx, u, opts)),
	}
}
