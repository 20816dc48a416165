package stempostgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemdriver/stemdrivertest"
	"github.com/stem-go/stem/stempostgres"
	"github.com/stem-go/stem/stemtype"
)

// The benchmarks run in a fresh schema each, on STEM_TEST_POSTGRES_URL.
// Compare figures measured in one run on one machine only.

func benchEnvelopes(prefix string, n int) []*stemtype.Envelope {
	out := make([]*stemtype.Envelope, n)
	now := time.Now().UTC()
	for i := range out {
		out[i] = &stemtype.Envelope{ID: fmt.Sprintf("%s-%d", prefix, i), Task: "bench.noop", Args: json.RawMessage(`{"n":1}`), Queue: "bench", CreatedAt: now}
	}
	return out
}

func benchBroker(b *testing.B, u string) *stempostgres.Broker {
	return opened[*stempostgres.Broker](b)(stempostgres.OpenBroker(context.Background(), u, stemdriver.Options{Namespace: "bench", Logger: quiet()}))
}

// BenchmarkPublish publishes b.N envelopes one call per envelope (8
// producers) and in batches of 1000.
func BenchmarkPublish(b *testing.B) {
	for _, batch := range []int{1, 1000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			br := benchBroker(b, testutil.PostgresSchema(b))
			ctx := context.Background()
			envs := benchEnvelopes("p", b.N)
			var next atomic.Int64
			producers := 1
			if batch == 1 {
				producers = 8
			}
			b.ResetTimer()
			var wg sync.WaitGroup
			for range producers {
				wg.Go(func() {
					for {
						start := int(next.Add(int64(batch))) - batch
						if start >= b.N {
							return
						}
						if err := br.Publish(ctx, envs[start:min(start+batch, b.N)]...); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
		})
	}
}

// BenchmarkClaimAck drains b.N published envelopes with 50 concurrent
// consumers, each claiming up to 100 at a time and acknowledging each
// batch with one Ack; with results, each batch's final results are written
// with one Put first, as a worker does.
func BenchmarkClaimAck(b *testing.B) {
	for _, withResults := range []bool{false, true} {
		b.Run(fmt.Sprintf("results=%v", withResults), func(b *testing.B) {
			u := testutil.PostgresSchema(b)
			br := benchBroker(b, u)
			res := opened[*stempostgres.Results](b)(stempostgres.OpenResults(context.Background(), u, stemdriver.Options{Namespace: "bench", Logger: quiet()}))
			ctx := context.Background()
			envs := benchEnvelopes("d", b.N)
			for start := 0; start < b.N; start += 1000 {
				if err := br.Publish(ctx, envs[start:min(start+1000, b.N)]...); err != nil {
					b.Fatal(err)
				}
			}
			var left atomic.Int64
			left.Store(int64(b.N))
			b.ResetTimer()
			var wg sync.WaitGroup
			for i := range 50 {
				wg.Go(func() {
					for left.Load() > 0 {
						ds, err := br.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"bench"}, Consumer: fmt.Sprintf("c%d", i), Max: 100, Lease: time.Minute, Wait: 20 * time.Millisecond})
						if err != nil {
							b.Error(err)
							return
						}
						if len(ds) == 0 {
							continue
						}
						if withResults {
							now := time.Now().UTC()
							rs := make([]*stemtype.TaskResult, len(ds))
							for j, d := range ds {
								rs[j] = &stemtype.TaskResult{ID: d.Envelope.ID, Task: d.Envelope.Task, Queue: d.Queue, State: stemtype.StateSucceeded, Result: json.RawMessage(`null`), FinishedAt: now, UpdatedAt: now}
							}
							if err := res.Put(ctx, rs...); err != nil {
								b.Error(err)
								return
							}
						}
						if err := br.Ack(ctx, ds...); err != nil {
							b.Error(err)
							return
						}
						left.Add(-int64(len(ds)))
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
		})
	}
}

// BenchmarkWorkerDrain measures what a user sees: one stem.Worker at
// concurrency 50 (defaults otherwise, results recorded) drains 20,000
// no-op tasks enqueued beforehand with EnqueueBatch. One op is one drain.
func BenchmarkWorkerDrain(b *testing.B) {
	const n = 20000
	u := testutil.PostgresSchema(b)
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		ns := fmt.Sprintf("drain%d", i)
		ctx := context.Background()
		opts := stemdriver.Options{Namespace: ns, Logger: quiet()}
		broker := opened[*stempostgres.Broker](b)(stempostgres.OpenBroker(ctx, u, opts))
		results := opened[*stempostgres.Results](b)(stempostgres.OpenResults(ctx, u, opts))
		took := systemtest.DrainOnce(b, broker, results, ns, n, stem.WorkerConfig{Concurrency: 50, Logger: quiet()})
		b.ReportMetric(n/took.Seconds(), "tasks/s")
	}
}

// BenchmarkIdlePickup measures how long a message published to an idle
// queue takes to reach a consumer blocked in Claim, woken by NOTIFY
// (stemdrivertest.BenchIdlePickup).
func BenchmarkIdlePickup(b *testing.B) {
	u := testutil.PostgresSchema(b)
	env := benchEnvelopes("idle", 1)[0]
	env.Queue = "idle"
	stemdrivertest.BenchIdlePickup(b, benchBroker(b, u), benchBroker(b, u), env)
}

// BenchmarkRevokeResync measures a worker's periodic revoke re-sync with
// nothing changed, over 100,000 stored records of its namespace: List
// reads and decodes them all; ListChanges from the cursor of the previous
// re-sync reads the (namespace, xid) index from the cursor's snapshot on,
// and finds nothing.
func BenchmarkRevokeResync(b *testing.B) {
	const total = 100_000
	u := testutil.PostgresSchema(b)
	ctx := context.Background()
	ns := "bench"
	rs := opened[*stempostgres.Revokes](b)(stempostgres.OpenRevokes(ctx, u, stemdriver.Options{Namespace: ns, Logger: quiet()}))
	recs := make([]stemtype.RevokeRecord, total)
	at := time.Now().UTC()
	for i := range recs {
		recs[i] = stemtype.RevokeRecord{Namespace: ns, TaskID: fmt.Sprintf("task-%06d", i), Version: 1, IssuedAt: at,
			Terminate: true, Reason: "bench", ExpiresAt: at.Add(24 * time.Hour)}
	}
	for start := 0; start < total; start += 5000 {
		if _, err := rs.Upsert(ctx, recs[start:start+5000]...); err != nil {
			b.Fatal(err)
		}
	}
	// Statistics, as autovacuum would have them on a table this size.
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(context.Background())
	schema, err := stempostgres.SchemaFromURL(u)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "VACUUM ANALYZE "+pgx.Identifier{schema, "stem_revokes"}.Sanitize()); err != nil {
		b.Fatal(err)
	}
	b.Run("List", func(b *testing.B) {
		for b.Loop() {
			got, err := rs.List(ctx, ns)
			if err != nil || len(got) != total {
				b.Fatalf("List = %d records, %v; want %d", len(got), err, total)
			}
		}
	})
	b.Run("ListChanges", func(b *testing.B) {
		_, cur, err := rs.ListChanges(ctx, ns, "")
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			got, next, err := rs.ListChanges(ctx, ns, cur)
			if err != nil || len(got) != 0 {
				b.Fatalf("ListChanges = %d records, %v; want none", len(got), err)
			}
			cur = next
		}
	})
	// The re-sync prunes too: with nothing expired, it must not read
	// every record either.
	b.Run("PruneNothingExpired", func(b *testing.B) {
		for b.Loop() {
			if n, err := rs.Prune(ctx, ns, time.Now()); err != nil || n != 0 {
				b.Fatalf("Prune = %d, %v; want 0", n, err)
			}
		}
	})
}
