package stemmem_test

import (
	"testing"

	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
)

// TestSystem runs the system suite on one Hub: every namespace of the run
// lives in it, as they would on one server; a second Hub is the other
// scope of the scope isolation case.
func TestSystem(t *testing.T) {
	hub, elsewhere := stemmem.New(), stemmem.New()
	systemtest.Run(t, systemtest.Harness{
		Open:          func(t *testing.T, namespace string) systemtest.Roles { return roles(t, hub, namespace) },
		OpenElsewhere: func(t *testing.T, namespace string) systemtest.Roles { return roles(t, elsewhere, namespace) },
	})
}

// roles opens the four roles of namespace on hub and closes them when t
// ends.
func roles(t *testing.T, hub *stemmem.Hub, namespace string) systemtest.Roles {
	opts := stemdriver.Options{Namespace: namespace}
	r := systemtest.Roles{Broker: hub.Broker(opts), Results: hub.Results(opts),
		Revokes: hub.Revokes(), Control: hub.Control(opts)}
	t.Cleanup(func() {
		_ = r.Broker.Close()
		_ = r.Results.Close()
		_ = r.Revokes.Close()
		_ = r.Control.Close()
	})
	return r
}
