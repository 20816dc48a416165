package stem_test

import (
	"math"
	"testing"

	"github.com/stem-go/stem"
)

// Absurd Concurrency or Prefetch values are refused by NewWorker with an
// error (stem worker start exits 64), rather than overflowing the size of
// the worker's hand-off queue and panicking in Run.
func TestHugeConcurrencyOrPrefetchIsRefused(t *testing.T) {
	e := newEnv(t)
	for _, c := range []struct {
		name                  string
		concurrency, prefetch int
	}{
		{"prefetch max int", 1, math.MaxInt},
		{"concurrency max int", math.MaxInt, 1},
		{"both half max int", math.MaxInt / 2, math.MaxInt / 2},
		{"default prefetch overflows", math.MaxInt/4 + 1, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := stem.NewWorker(stem.WorkerConfig{Registry: e.reg, Broker: e.broker,
				Concurrency: c.concurrency, Prefetch: c.prefetch})
			if err == nil {
				t.Fatalf("NewWorker accepted Concurrency %d and Prefetch %d", c.concurrency, c.prefetch)
			}
		})
	}
	if _, err := stem.NewWorker(stem.WorkerConfig{Registry: e.reg, Broker: e.broker, Concurrency: 1000, Prefetch: 100000}); err != nil {
		t.Fatalf("a large but sane configuration was refused: %v", err)
	}
}
