package stemsqlite

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// BenchmarkRevokeResync measures a worker's periodic revoke re-sync with
// nothing changed, over 100,000 stored records of its namespace: List, the
// whole read a store without change listing costs, against ListChanges
// with a current cursor. PruneNothingExpired is the Prune that comes with
// each re-sync, finding nothing to delete.
func BenchmarkRevokeResync(b *testing.B) {
	const records = 100_000
	u, _ := tempURL(b, "resync.db")
	ctx := context.Background()
	rs := opened[*Revokes](b)(OpenRevokes(ctx, u, testOpts("bench")))
	now := time.Now()
	batch := make([]stemtype.RevokeRecord, 0, 5000)
	for i := range records {
		batch = append(batch, stemtype.RevokeRecord{Namespace: "bench", TaskID: fmt.Sprintf("task-%06d", i), Version: 1,
			IssuedAt: now, ExpiresAt: now.Add(24 * time.Hour), Reason: "benchmark", Terminate: true})
		if len(batch) == cap(batch) || i == records-1 {
			if _, err := rs.Upsert(ctx, batch...); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}

	b.Run("List", func(b *testing.B) {
		for b.Loop() {
			recs, err := rs.List(ctx, "bench")
			if err != nil || len(recs) != records {
				b.Fatalf("List = %d records, %v; want %d", len(recs), err, records)
			}
		}
	})
	b.Run("ListChanges", func(b *testing.B) {
		all, cur, err := rs.ListChanges(ctx, "bench", "")
		if err != nil || len(all) != records {
			b.Fatalf(`ListChanges("") = %d records, %v; want %d`, len(all), err, records)
		}
		for b.Loop() {
			recs, next, err := rs.ListChanges(ctx, "bench", cur)
			if err != nil || len(recs) != 0 || next != cur {
				b.Fatalf("ListChanges(%q) = %d records, %q, %v; want none, the same cursor", cur, len(recs), next, err)
			}
		}
	})
	b.Run("PruneNothingExpired", func(b *testing.B) {
		for b.Loop() {
			if n, err := rs.Prune(ctx, "bench", now); err != nil || n != 0 {
				b.Fatalf("Prune = %d, %v; want 0", n, err)
			}
		}
	})
}
