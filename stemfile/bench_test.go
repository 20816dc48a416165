package stemfile

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// writeRecords writes a file of n records of namespace stem.
func writeRecords(b *testing.B, path string, n int) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriter(f)
	now := time.Now().UTC()
	for i := range n {
		r := stemtype.RevokeRecord{
			Namespace: "stem", TaskID: fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i), Version: now.UnixMicro() + int64(i),
			IssuedAt: now, Terminate: true, Reason: "bad deploy", RequestedBy: "ops@example.com", ExpiresAt: now.Add(24 * time.Hour),
		}
		line, _ := json.Marshal(r)
		w.Write(line)
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	f.Close()
}

// BenchmarkLoad opens a file of 100,000 records and lists them: the
// start-up load of a worker.
func BenchmarkLoad(b *testing.B) {
	const n = 100_000
	path := filepath.Join(b.TempDir(), "revokes.ndjson")
	writeRecords(b, path, n)
	for b.Loop() {
		rs, err := OpenRevokes(path, stemdriver.Options{})
		if err != nil {
			b.Fatal(err)
		}
		recs, err := rs.List(b.Context(), "stem")
		if err != nil || len(recs) != n {
			b.Fatalf("List = %d records, %v", len(recs), err)
		}
		rs.Close()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/record")
}

// BenchmarkListUnchanged lists 1,000 records from a handle that has read
// the file already: a worker's periodic re-sync when nothing changed.
func BenchmarkListUnchanged(b *testing.B) {
	path := filepath.Join(b.TempDir(), "revokes.ndjson")
	writeRecords(b, path, 1000)
	rs, err := OpenRevokes(path, stemdriver.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer rs.Close()
	for b.Loop() {
		if _, err := rs.List(b.Context(), "stem"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUpsert upserts one record per call, each a new version of one
// of 100 tasks, so compactions are included. Each call fsyncs.
func BenchmarkUpsert(b *testing.B) {
	path := filepath.Join(b.TempDir(), "revokes.ndjson")
	rs, err := OpenRevokes(path, stemdriver.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer rs.Close()
	now := time.Now().UTC()
	v := int64(0)
	for b.Loop() {
		v++
		r := stemtype.RevokeRecord{Namespace: "stem", TaskID: fmt.Sprintf("task-%d", v%100), Version: v, IssuedAt: now}
		if _, err := rs.Upsert(b.Context(), r); err != nil {
			b.Fatal(err)
		}
	}
}
