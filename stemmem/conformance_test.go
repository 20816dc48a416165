package stemmem_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/isolated"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemdriver/stemdrivertest"
	"github.com/stem-go/stem/stemmem"
)

// TestMain serves the child role of the system suite's isolated tasks when
// a Pool re-executed the test binary, and otherwise checks that no test
// leaves a goroutine behind.
func TestMain(m *testing.M) {
	isolated.ServeIfChild(systemtest.Registry())
	goleak.VerifyTestMain(m)
}

// TestConformance runs the driver suite on a Hub of its own; every open on
// it is a new value, as a new connection to one server would be. The Hub's
// data lives as long as the test, so openers only close what they open.
func TestConformance(t *testing.T) {
	hub := stemmem.New()
	stemdrivertest.Run(t, stemdrivertest.Harness{
		Broker: func(t *testing.T, namespace string) stemdriver.Broker {
			b := hub.Broker(stemdriver.Options{Namespace: namespace})
			t.Cleanup(func() { _ = b.Close() })
			return b
		},
		Results: func(t *testing.T, namespace string) stemdriver.ResultBackend {
			r := hub.Results(stemdriver.Options{Namespace: namespace})
			t.Cleanup(func() { _ = r.Close() })
			return r
		},
		Revokes: func(t *testing.T, _ string) stemdriver.RevokeStore {
			r := hub.Revokes()
			t.Cleanup(func() { _ = r.Close() })
			return r
		},
		Control: func(t *testing.T, namespace string) stemdriver.ControlTransport {
			c := hub.Control(stemdriver.Options{Namespace: namespace})
			t.Cleanup(func() { _ = c.Close() })
			return c
		},
		Capabilities: stemdrivertest.Capabilities{ConditionalPut: true, RevokeChanges: true},
	})
}
