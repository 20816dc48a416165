package stemredis

import (
	"testing"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemdriver/stemdrivertest"
)

// TestConformance runs the driver suite against the test server. Every
// opener deletes the keys of its namespace when its test ends (the revoke
// store's too: the suite opens one for each namespace it writes to).
func TestConformance(t *testing.T) {
	stemdrivertest.Run(t, stemdrivertest.Harness{
		Broker: func(t *testing.T, namespace string) stemdriver.Broker {
			cleanupNS(t, namespace)
			return openTestBroker(t, namespace)
		},
		Results: func(t *testing.T, namespace string) stemdriver.ResultBackend {
			cleanupNS(t, namespace)
			return openTestResults(t, namespace, "")
		},
		Revokes: func(t *testing.T, namespace string) stemdriver.RevokeStore {
			cleanupNS(t, namespace)
			return openTestRevokes(t)
		},
		Control: func(t *testing.T, namespace string) stemdriver.ControlTransport {
			cleanupNS(t, namespace)
			return openTestControl(t, namespace)
		},
		Capabilities: stemdrivertest.Capabilities{ConditionalPut: true, FinalGet: true, PendingPublish: true, RevokeChanges: true, RevokePublish: true},
	})
}
