package stem_test

import (
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
)

// BenchmarkWorkerDrainMemory measures the engine alone: one worker drains
// 5,000 no-op tasks from the memory backend (its start and shutdown
// included, the enqueue not). Compare ns/op and allocs/op between two
// commits on one machine; allocs/op is the steadier figure on a busy one.
func BenchmarkWorkerDrainMemory(b *testing.B) {
	const n = 5000
	for b.Loop() {
		b.StopTimer() // DrainOnce times the drain alone
		hub := stemmem.New()
		opts := stemdriver.Options{Namespace: "bench", Logger: quiet()}
		systemtest.DrainOnce(b, hub.Broker(opts), hub.Results(opts), "bench", n,
			stem.WorkerConfig{Logger: quiet(), ClaimWait: 10 * time.Millisecond})
	}
}
