package stemredis

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemdriver/stemdrivertest"
	"github.com/stem-go/stem/stemtype"
)

func TestConformanceBroker(t *testing.T) {
	stemdrivertest.RunBroker(t, func(t *testing.T, namespace string) stemdriver.Broker {
		cleanupNS(t, namespace)
		return openTestBroker(t, namespace)
	})
}

func TestConformanceResults(t *testing.T) {
	stemdrivertest.RunResults(t, func(t *testing.T, namespace string) stemdriver.ResultBackend {
		cleanupNS(t, namespace)
		return openTestResults(t, namespace, "")
	})
}

func TestConformanceRevokes(t *testing.T) {
	stemdrivertest.RunRevokes(t, func(t *testing.T) stemdriver.RevokeStore {
		s := &namespaceRecorder{RevokeStore: openTestRevokes(t), seen: map[string]bool{}}
		rdb := rawClient(t)
		t.Cleanup(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			for ns := range s.seen {
				deleteNSKeys(t, rdb, ns)
			}
		})
		return s
	})
}

func TestConformanceControl(t *testing.T) {
	stemdrivertest.RunControl(t, func(t *testing.T, namespace string) stemdriver.ControlTransport {
		cleanupNS(t, namespace)
		return openTestControl(t, namespace)
	})
}

// namespaceRecorder notes the namespaces the revoke suite writes to, so
// that their keys can be deleted after the test.
type namespaceRecorder struct {
	stemdriver.RevokeStore
	mu   sync.Mutex
	seen map[string]bool
}

func (r *namespaceRecorder) note(ns string) {
	r.mu.Lock()
	r.seen[ns] = true
	r.mu.Unlock()
}

func (r *namespaceRecorder) Upsert(ctx context.Context, recs ...stemtype.RevokeRecord) ([]stemtype.RevokeRecord, error) {
	for _, rec := range recs {
		r.note(rec.Namespace)
	}
	return r.RevokeStore.Upsert(ctx, recs...)
}

func (r *namespaceRecorder) List(ctx context.Context, namespace string) ([]stemtype.RevokeRecord, error) {
	r.note(namespace)
	return r.RevokeStore.List(ctx, namespace)
}

func (r *namespaceRecorder) Prune(ctx context.Context, namespace string, now time.Time) (int, error) {
	r.note(namespace)
	return r.RevokeStore.Prune(ctx, namespace, now)
}
