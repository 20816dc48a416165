package stemdrivertest

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// BenchIdlePickup measures how long a message published to an idle queue
// takes to reach a consumer blocked in Claim: one op is producer's Publish
// of env and consumer's blocked Claim returning it (and its Ack). producer
// and consumer may be one broker (a producer in the worker's process) or
// two (another process). Between ops it pauses a random 0-10 ms, off the
// clock, so that publishes fall at every phase of a backend's polling. It
// reports the median and the 99th percentile as p50-ms and p99-ms. Each
// backend's benchmarks call it with brokers of their own.
func BenchIdlePickup(b *testing.B, producer, consumer stemdriver.Broker, env *stemtype.Envelope) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan time.Time)
	errc := make(chan error, 1)
	go func() {
		for {
			ds, err := consumer.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{env.Queue}, Consumer: "c",
				Max: 1, Lease: time.Minute, Wait: time.Minute})
			at := time.Now()
			if err != nil {
				errc <- err
				return
			}
			for _, d := range ds {
				if err := consumer.Ack(ctx, d); err != nil {
					errc <- err
					return
				}
				got <- at
			}
		}
	}()
	lat := make([]time.Duration, 0, b.N)
	var pause time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		time.Sleep(pause) // lets the consumer go idle again; not a synchronisation
		pause = time.Duration(rand.Int64N(int64(10 * time.Millisecond)))
		b.StartTimer()
		start := time.Now()
		if err := producer.Publish(ctx, env); err != nil {
			b.Fatal(err)
		}
		select {
		case at := <-got:
			lat = append(lat, at.Sub(start))
		case err := <-errc:
			b.Fatal(err)
		}
	}
	b.StopTimer()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) && !errors.Is(err, stemdriver.ErrClosed) {
		b.Fatal(err)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
