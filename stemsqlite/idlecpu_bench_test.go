//go:build unix

package stemsqlite

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
)

// BenchmarkIdleCPU measures the CPU an idle worker's drivers cost: a Claim
// blocked on an empty queue (re-issued every second, as a worker's claim
// loop does) and a control subscription, both waiting on the watcher. One
// op is one second of idling; it reports the process's CPU time (user and
// system) as a percentage of one core.
func BenchmarkIdleCPU(b *testing.B) {
	u, _ := tempURL(b, "idle.db")
	h := openHandle(b, u, "idle")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sub, err := h.control.Subscribe(ctx, "w")
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			_, _ = h.broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 10,
				Lease: time.Minute, Wait: time.Second})
		}
	}()
	time.Sleep(100 * time.Millisecond) // settle: the claim loop is blocked
	before := cpuTime(b)
	b.ResetTimer()
	for range b.N {
		time.Sleep(time.Second)
	}
	b.StopTimer()
	used := cpuTime(b) - before
	cancel()
	<-done
	b.ReportMetric(100*used.Seconds()/b.Elapsed().Seconds(), "cpu-%")
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
