package stemsqlite

import (
	"io"
	"log/slog"
	"testing"

	"go.uber.org/goleak"

	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/isolated"
	"github.com/stem-go/stem/stemdriver"
)

// TestMain serves as a worker process of TestProcessesShareOneFile, or the
// child role of the system suite's isolated tasks, when the test binary was
// re-executed for it, and otherwise checks that no test
// leaves a goroutine behind.
func TestMain(m *testing.M) {
	serveChildWorker()
	isolated.ServeIfChild(systemtest.Registry())
	goleak.VerifyTestMain(m)
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testOpts(ns string) stemdriver.Options { return testOptsWith(ns, quiet()) }

func testOptsWith(ns string, logger *slog.Logger) stemdriver.Options {
	return stemdriver.Options{Namespace: ns, Logger: logger}
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
