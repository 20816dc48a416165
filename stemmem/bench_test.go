package stemmem_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemtype"
)

// BenchmarkPublishClaimAck measures one message's trip through the memory
// broker, published and claimed in batches of 100.
func BenchmarkPublishClaimAck(b *testing.B) {
	const batch = 100
	br := stemmem.New().Broker(stemdriver.Options{Namespace: "bench"})
	envs := make([]*stemtype.Envelope, batch)
	for i := range envs {
		envs[i] = &stemtype.Envelope{ID: fmt.Sprint(i), Task: "noop", Args: []byte(`{}`), Queue: "q", CreatedAt: time.Now()}
	}
	req := stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: batch, Lease: time.Minute}
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		if err := br.Publish(ctx, envs...); err != nil {
			b.Fatal(err)
		}
		ds, err := br.Claim(ctx, req)
		if err != nil || len(ds) != batch {
			b.Fatalf("claimed %d, err %v", len(ds), err)
		}
		if err := br.Ack(ctx, ds...); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkClaimAck measures claim and ack alone on the memory broker: the
// messages are published beforehand, outside the timer, and one op is one
// Claim of Max messages and the Ack of them all; msgs/s is per message.
func BenchmarkClaimAck(b *testing.B) {
	for _, max := range []int{1, 100} {
		b.Run(fmt.Sprintf("max=%d", max), func(b *testing.B) {
			br := stemmem.New().Broker(stemdriver.Options{Namespace: "bench"})
			ctx := b.Context()
			env := &stemtype.Envelope{Task: "noop", Args: []byte(`{}`), Queue: "q", CreatedAt: time.Now()}
			req := stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: max, Lease: time.Minute}
			publish := func(n int) {
				envs := make([]*stemtype.Envelope, n)
				for i := range envs {
					e := *env
					e.ID = fmt.Sprint(i)
					envs[i] = &e
				}
				if err := br.Publish(ctx, envs...); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			left := 0
			for b.Loop() {
				if left == 0 {
					b.StopTimer()
					publish(10_000 * max)
					left = 10_000
					b.StartTimer()
				}
				ds, err := br.Claim(ctx, req)
				if err != nil || len(ds) != max {
					b.Fatalf("claimed %d, err %v", len(ds), err)
				}
				if err := br.Ack(ctx, ds...); err != nil {
					b.Fatal(err)
				}
				left--
			}
			b.ReportMetric(float64(b.N*max)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
