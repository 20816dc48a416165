package stem_test

import (
	"context"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
)

// leaseRecorder is the real memory broker that reports the lease of every
// claim that returned a delivery.
type leaseRecorder struct {
	stemdriver.Broker
	leases chan time.Duration
}

func (b *leaseRecorder) Claim(ctx context.Context, req stemdriver.ClaimRequest) ([]stemdriver.Delivery, error) {
	ds, err := b.Broker.Claim(ctx, req)
	if len(ds) > 0 {
		select {
		case b.leases <- req.Lease:
		default:
		}
	}
	return ds, err
}

// A worker configured without a lease claims with DefaultLease, which is
// short enough that a killed worker's tasks are re-claimed within the 15 s
// of issue 13's fault matrix: one lease after the kill at most, plus the
// claim that finds them and the task's start, for which 5 s are left
// (the e2e test TestKilledWorkersTasksReclaimedWithinFifteenSeconds
// measures the whole through the binary on every backend).
func TestDefaultLeaseReclaimsWithinFifteenSeconds(t *testing.T) {
	if stem.DefaultLease <= 0 || stem.DefaultLease > 10*time.Second {
		t.Fatalf("DefaultLease = %v, want at most 10s: a killed worker's tasks must be re-claimed within 15s", stem.DefaultLease)
	}
	e := newEnv(t)
	ran := make(chan struct{}, 1)
	stem.Register(e.reg, "noop", func(*stem.TaskContext, stem.Args) (any, error) {
		ran <- struct{}{}
		return nil, nil
	}, stem.TaskOptions{})
	b := &leaseRecorder{Broker: e.broker, leases: make(chan time.Duration, 1)}
	e.broker = b
	e.enqueue("noop", nil, stem.EnqueueOptions{})
	_, stop := e.startWorker(stem.WorkerConfig{})
	defer stop()
	select {
	case got := <-b.leases:
		if got != stem.DefaultLease {
			t.Errorf("claim lease = %v, want DefaultLease %v", got, stem.DefaultLease)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no claim returned the task within 10s")
	}
	<-ran
}
