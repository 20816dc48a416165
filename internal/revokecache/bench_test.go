package revokecache

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/stemtype"
)

const million = 1_000_000

// benchRecords returns n records shaped like those decoded from a revoke
// store: every string its own allocation, as encoding/json makes them,
// uuid-length task ids, one reason and requester per batch of 1000, and
// half of them expiring within a day.
func benchRecords(n int, now time.Time) []stemtype.RevokeRecord {
	recs := make([]stemtype.RevokeRecord, n)
	for i := range recs {
		r := stemtype.RevokeRecord{
			Namespace:   strings.Clone("stem"),
			TaskID:      fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i*7919),
			Version:     now.UnixMicro() + int64(i),
			IssuedAt:    now.Add(time.Duration(i) * time.Microsecond),
			Terminate:   i%4 == 0,
			Reason:      strings.Clone(fmt.Sprintf("bad deploy %d", i/1000)),
			RequestedBy: strings.Clone("ops@example.com"),
		}
		if i%2 == 0 {
			r.ExpiresAt = now.Add(time.Duration(i%86400) * time.Second)
			r.ExpiresAt = r.ExpiresAt.Add(time.Hour)
		}
		recs[i] = r
	}
	return recs
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkLoadMillion loads a million records into an empty cache. It
// reports the load time per record and in all (ns/op is per million), and
// the heap the loaded cache retains per record, task ids included.
func BenchmarkLoadMillion(b *testing.B) {
	now := time.Now().UTC()
	var bytesPerRecord float64
	for range b.N {
		b.StopTimer()
		before := heapInUse()
		recs := benchRecords(million, now)
		c := New()
		b.StartTimer()
		if applied, _, _ := c.Load(now, recs...); applied != million {
			b.Fatalf("applied %d, want %d", applied, million)
		}
		b.StopTimer()
		recs = nil
		after := heapInUse()
		runtime.KeepAlive(c)
		if c.Len() != million {
			b.Fatalf("Len = %d", c.Len())
		}
		bytesPerRecord = float64(after-before) / million
		b.StartTimer()
	}
	b.ReportMetric(bytesPerRecord, "B/record")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/million, "ns/record")
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/load")
}

// BenchmarkApplyMillion is BenchmarkLoadMillion through Apply, which also
// returns the applied records.
func BenchmarkApplyMillion(b *testing.B) {
	now := time.Now().UTC()
	for range b.N {
		b.StopTimer()
		recs := benchRecords(million, now)
		c := New()
		b.StartTimer()
		if applied, _, _ := c.Apply(now, recs...); len(applied) != million {
			b.Fatalf("applied %d, want %d", len(applied), million)
		}
	}
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/load")
}

func loadedCache(b *testing.B, now time.Time) (*Cache, []string) {
	b.Helper()
	recs := benchRecords(million, now)
	c := New()
	c.Load(now, recs...)
	ids := make([]string, 4096)
	for i := range ids {
		if i%2 == 0 {
			ids[i] = recs[(i*7919)%million].TaskID // hit
		} else {
			ids[i] = fmt.Sprintf("absent-%d", i) // miss
		}
	}
	return c, ids
}

// BenchmarkLookup looks up task ids in a cache of a million records, half
// of them held, from one goroutine.
func BenchmarkLookup(b *testing.B) {
	now := time.Now().UTC()
	c, ids := loadedCache(b, now)
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		c.Lookup(ids[i%len(ids)], now)
		i++
	}
}

// BenchmarkLookupParallel is BenchmarkLookup from GOMAXPROCS goroutines.
func BenchmarkLookupParallel(b *testing.B) {
	now := time.Now().UTC()
	c, ids := loadedCache(b, now)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			c.Lookup(ids[i%len(ids)], now)
			i++
		}
	})
}

// BenchmarkPruneNothingDue prunes a cache of a million records when no
// bucket is due: the common case of a periodic prune.
func BenchmarkPruneNothingDue(b *testing.B) {
	now := time.Now().UTC()
	c, _ := loadedCache(b, now)
	b.ResetTimer()
	for b.Loop() {
		if n := c.Prune(now); n != 0 {
			b.Fatalf("pruned %d", n)
		}
	}
}

// BenchmarkPruneDay loads a million records, half of which expire over a
// day, then prunes once a minute through that day: one op is the 1440
// prunes. It reports the cost per prune call and per record removed.
func BenchmarkPruneDay(b *testing.B) {
	now := time.Now().UTC()
	const calls = 24 * 60
	pruned := 0
	for range b.N {
		b.StopTimer()
		c, _ := loadedCache(b, now)
		at := now
		b.StartTimer()
		for range calls {
			at = at.Add(time.Minute)
			pruned += c.Prune(at.Add(time.Hour))
		}
		b.StopTimer()
		if c.Len() != million/2 {
			b.Fatalf("Len = %d after a day, want %d", c.Len(), million/2)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*calls), "ns/prune")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(pruned), "ns/record")
}
