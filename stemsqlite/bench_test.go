package stemsqlite

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemdriver/stemdrivertest"
	"github.com/stem-go/stem/stemtype"
)

func benchEnvelopes(prefix, queue string, n int) []*stemtype.Envelope {
	envs := make([]*stemtype.Envelope, n)
	now := time.Now()
	for i := range envs {
		envs[i] = &stemtype.Envelope{ID: fmt.Sprintf("%s-%d", prefix, i), Task: "noop", Args: []byte(`{}`),
			Queue: queue, CreatedAt: now}
	}
	return envs
}

func benchBroker(b *testing.B) *Broker {
	u, _ := tempURL(b, "bench.db")
	return opened[*Broker](b)(OpenBroker(context.Background(), u, testOpts("bench")))
}

// BenchmarkPublishBatch publishes b.N envelopes in batches of 500, each
// batch one transaction.
func BenchmarkPublishBatch(b *testing.B) {
	br := benchBroker(b)
	ctx := context.Background()
	envs := benchEnvelopes("p", "q", b.N)
	b.ResetTimer()
	for start := 0; start < b.N; start += 500 {
		if err := br.Publish(ctx, envs[start:min(start+500, b.N)]...); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
}

// BenchmarkClaimAckDrain drains b.N published envelopes with consumers
// concurrent consumers, each claiming up to 100 at a time and
// acknowledging each batch at once, as a worker does.
func BenchmarkClaimAckDrain(b *testing.B) {
	for _, consumers := range []int{1, 4} {
		b.Run(fmt.Sprintf("consumers=%d", consumers), func(b *testing.B) {
			br := benchBroker(b)
			ctx := context.Background()
			envs := benchEnvelopes("d", "q", b.N)
			for start := 0; start < b.N; start += 1000 {
				if err := br.Publish(ctx, envs[start:min(start+1000, b.N)]...); err != nil {
					b.Fatal(err)
				}
			}
			var (
				mu   sync.Mutex
				done int
				wg   sync.WaitGroup
			)
			b.ResetTimer()
			for c := range consumers {
				wg.Go(func() {
					for {
						mu.Lock()
						finished := done >= b.N
						mu.Unlock()
						if finished {
							return
						}
						ds, err := br.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: fmt.Sprint("c", c),
							Max: 100, Lease: time.Minute, Wait: 10 * time.Millisecond})
						if err != nil {
							b.Error(err)
							return
						}
						if len(ds) == 0 {
							continue
						}
						if err := br.Ack(ctx, ds...); err != nil {
							b.Error(err)
							return
						}
						mu.Lock()
						done += len(ds)
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
		})
	}
}

// BenchmarkIdlePickup measures idle pickup (stemdrivertest.BenchIdlePickup)
// through the same handle (a producer in the worker's process, woken by
// the in-process signal) and through another handle of the file (another
// process, woken by the WAL watcher and data_version).
func BenchmarkIdlePickup(b *testing.B) {
	for _, tc := range []struct {
		name  string
		other bool
	}{{"same-process", false}, {"other-process", true}} {
		b.Run(tc.name, func(b *testing.B) {
			u, _ := tempURL(b, "idle.db")
			consumer := openHandle(b, u, "idle")
			producer := consumer
			if tc.other {
				producer = openHandle(b, u, "idle")
			}
			stemdrivertest.BenchIdlePickup(b, producer.broker, consumer.broker, benchEnvelopes("idle", "idle", 1)[0])
		})
	}
}

// BenchmarkControlDelivery measures how long a control message takes from
// Publish on one handle to a subscription on another (another process).
func BenchmarkControlDelivery(b *testing.B) {
	u, _ := tempURL(b, "control.db")
	a, c := openHandle(b, u, "ctl"), openHandle(b, u, "ctl")
	ctx := context.Background()
	sub, err := a.control.Subscribe(ctx, "w")
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	lat := make([]time.Duration, 0, b.N)
	var pause time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		time.Sleep(pause)
		pause = time.Duration(rand.Int64N(int64(10 * time.Millisecond)))
		b.StartTimer()
		start := time.Now()
		if err := c.control.Publish(ctx, []string{"w"}, []byte("ping")); err != nil {
			b.Fatal(err)
		}
		<-sub.C()
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
