package stemfile

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/isolated"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// TestMain serves the child role of the system suite's isolated tasks when
// the test binary is re-executed as one, and runs the tests otherwise.
func TestMain(m *testing.M) {
	isolated.ServeIfChild(systemtest.Registry())
	goleak.VerifyTestMain(m)
}

// logEntry is one record seen by a logRecorder.
type logEntry struct {
	level slog.Level
	msg   string
	attrs map[string]any
}

// logRecorder collects log records so tests can assert on them.
type logRecorder struct {
	mu   sync.Mutex
	list []logEntry
}

func newLogRecorder() *logRecorder { return &logRecorder{} }

func (l *logRecorder) logger() *slog.Logger { return slog.New(recordHandler{rec: l}) }

func (l *logRecorder) entries() []logEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.list)
}

// warnings returns the Warn records, as "msg line=N" strings.
func (l *logRecorder) warnings() []string {
	var out []string
	for _, e := range l.entries() {
		if e.level == slog.LevelWarn {
			out = append(out, fmt.Sprintf("%s line=%v", e.msg, e.attrs["line"]))
		}
	}
	return out
}

type recordHandler struct {
	rec   *logRecorder
	attrs []slog.Attr
}

func (h recordHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h recordHandler) Handle(_ context.Context, r slog.Record) error {
	e := logEntry{level: r.Level, msg: r.Message, attrs: map[string]any{}}
	for _, a := range h.attrs {
		e.attrs[a.Key] = a.Value.Any()
	}
	r.Attrs(func(a slog.Attr) bool {
		e.attrs[a.Key] = a.Value.Any()
		return true
	})
	h.rec.mu.Lock()
	h.rec.list = append(h.rec.list, e)
	h.rec.mu.Unlock()
	return nil
}

func (h recordHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return recordHandler{rec: h.rec, attrs: append(slices.Clone(h.attrs), as...)}
}

func (h recordHandler) WithGroup(string) slog.Handler { return h }

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func rec(ns, task string, version int64) stemtype.RevokeRecord {
	return stemtype.RevokeRecord{
		Namespace:   ns,
		TaskID:      task,
		Version:     version,
		IssuedAt:    t0.Add(time.Duration(version) * time.Microsecond),
		Terminate:   version%2 == 1,
		Reason:      "test",
		RequestedBy: "ops",
	}
}

func expiring(r stemtype.RevokeRecord, at time.Time) stemtype.RevokeRecord {
	r.ExpiresAt = at
	return r
}

// line returns r as one line of the file, newline included.
func line(t *testing.T, r stemtype.RevokeRecord) string {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b) + "\n"
}

func open(t *testing.T, path string) (*Revokes, *logRecorder) {
	t.Helper()
	logs := newLogRecorder()
	rs, err := OpenRevokes(path, stemdriver.Options{Logger: logs.logger()})
	if err != nil {
		t.Fatalf("OpenRevokes(%s): %v", path, err)
	}
	t.Cleanup(func() { rs.Close() })
	return rs, logs
}

func tempPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "revokes.ndjson")
}

// keys lists recs as sorted "task@version" strings.
func keys(recs []stemtype.RevokeRecord) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = fmt.Sprintf("%s@%d", r.TaskID, r.Version)
	}
	slices.Sort(out)
	return out
}

func list(t *testing.T, rs *Revokes, ns string) []string {
	t.Helper()
	recs, err := rs.List(t.Context(), ns)
	if err != nil {
		t.Fatalf("List(%s): %v", ns, err)
	}
	return keys(recs)
}

func upsert(t *testing.T, rs *Revokes, recs ...stemtype.RevokeRecord) []stemtype.RevokeRecord {
	t.Helper()
	out, err := rs.Upsert(t.Context(), recs...)
	if err != nil {
		t.Fatalf("Upsert: %v", err)
	}
	return out
}

func want(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if want == nil {
		want = []string{}
	}
	if got == nil {
		got = []string{}
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s = %q, want %q", what, got, want)
	}
}

// fileLines returns the lines of the file at path, without newlines.
func fileLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

func TestUpsertListPrune(t *testing.T) {
	path := tempPath(t)
	rs, logs := open(t, path)

	out := upsert(t, rs, rec("stem", "a", 2), rec("stem", "b", 1), rec("other", "a", 5))
	want(t, "Upsert result", keys(out), "a@2", "a@5", "b@1")
	want(t, "List(stem)", list(t, rs, "stem"), "a@2", "b@1")
	want(t, "List(other)", list(t, rs, "other"), "a@5")
	want(t, "List(unused)", list(t, rs, "unused"))

	// Every record is stored, with version max(stored+1, proposed), and
	// returned with it; in one call, records apply in order.
	out = upsert(t, rs, rec("stem", "a", 1), rec("stem", "a", 2), rec("stem", "a", 3), rec("stem", "a", 9))
	if got := []int64{out[0].Version, out[1].Version, out[2].Version, out[3].Version}; !slices.Equal(got, []int64{3, 4, 5, 9}) {
		t.Errorf("Upsert versions returned = %v, want [3 4 5 9]", got)
	}
	if out[0].Terminate != rec("stem", "a", 1).Terminate || !out[0].IssuedAt.Equal(rec("stem", "a", 1).IssuedAt) {
		t.Errorf("Upsert returned %+v, want the record given at version 3", out[0])
	}
	want(t, "List(stem)", list(t, rs, "stem"), "a@9", "b@1")
	if n := len(fileLines(t, path)); n != 7 {
		t.Errorf("file has %d lines, want 7 (one per record)", n)
	}
	if last := fileLines(t, path)[3]; !strings.Contains(last, `"version":3,`) {
		t.Errorf("line 4 of the file = %s, want the record stored at version 3", last)
	}

	// Prune deletes the namespace's records that expired at or before now,
	// and only those.
	upsert(t, rs,
		expiring(rec("stem", "old", 1), t0.Add(-time.Hour)),
		expiring(rec("stem", "now", 1), t0),
		expiring(rec("stem", "later", 1), t0.Add(time.Nanosecond)),
		expiring(rec("other", "old", 1), t0.Add(-time.Hour)),
	)
	want(t, "List(stem) before Prune", list(t, rs, "stem"), "a@9", "b@1", "later@1", "now@1", "old@1")
	n, err := rs.Prune(t.Context(), "stem", t0)
	if err != nil || n != 2 {
		t.Fatalf("Prune = %d, %v; want 2, nil", n, err)
	}
	want(t, "List(stem) after Prune", list(t, rs, "stem"), "a@9", "b@1", "later@1")
	want(t, "List(other) after Prune", list(t, rs, "other"), "a@5", "old@1")
	if n, err := rs.Prune(t.Context(), "stem", t0); err != nil || n != 0 {
		t.Errorf("second Prune = %d, %v; want 0, nil", n, err)
	}
	if w := logs.warnings(); len(w) != 0 {
		t.Errorf("warnings: %q", w)
	}
}

func TestUpsertRejectsBadInputAndWritesNothing(t *testing.T) {
	path := tempPath(t)
	rs, _ := open(t, path)
	upsert(t, rs, rec("stem", "a", 1))
	before, _ := os.ReadFile(path)

	bad := rec("stem", "b", 0)
	_, err := rs.Upsert(t.Context(), rec("stem", "c", 1), bad)
	if err == nil || !strings.Contains(err.Error(), "record 2 of 2") || !strings.Contains(err.Error(), "non-positive version") {
		t.Fatalf("Upsert with a bad record: error = %v, want one naming record 2 of 2 and its fault", err)
	}
	huge := rec("stem", "d", 1)
	huge.Reason = strings.Repeat("x", maxLine)
	if _, err := rs.Upsert(t.Context(), huge); err == nil || !strings.Contains(err.Error(), "more than the") {
		t.Fatalf("Upsert of an oversized record: error = %v, want a size error", err)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Errorf("file changed by failed Upserts:\n%s", after)
	}
	want(t, "List", list(t, rs, "stem"), "a@1")
}

func TestPersistsAcrossReopen(t *testing.T) {
	path := tempPath(t)
	rs, _ := open(t, path)
	r := expiring(rec("stem", "a", 7), t0.Add(time.Hour))
	r.IssuedAt = r.IssuedAt.In(time.FixedZone("CEST", 2*3600))
	r.KillAfterMs = 2500
	upsert(t, rs, r, rec("stem", "b", 3))
	if err := rs.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	rs2, _ := open(t, path)
	got, err := rs2.List(t.Context(), "stem")
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, func(a, b stemtype.RevokeRecord) int { return cmp.Compare(a.TaskID, b.TaskID) })
	if len(got) != 2 {
		t.Fatalf("List after reopen returned %d records, want 2", len(got))
	}
	wantA := r
	wantA.IssuedAt = r.IssuedAt.UTC()
	if got[0] != wantA {
		t.Errorf("record after reopen = %+v, want %+v", got[0], wantA)
	}
	// Times are written in UTC, as the format promises.
	if l := fileLines(t, path)[0]; !strings.Contains(l, `"issuedAt":"2025-06-01T12:00:00.000007Z"`) {
		t.Errorf("first line %s does not hold issuedAt in UTC", l)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	_, err := OpenRevokes(filepath.Join(missing, "revokes.ndjson"), stemdriver.Options{})
	if err == nil || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("OpenRevokes in a missing directory: error = %v, want one naming %s", err, missing)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Errorf("OpenRevokes created the missing directory")
	}
	if _, err := OpenRevokes(dir, stemdriver.Options{}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("OpenRevokes on a directory: error = %v, want 'not a regular file'", err)
	}
	if _, err := OpenRevokes("", stemdriver.Options{}); err == nil {
		t.Errorf("OpenRevokes(\"\") succeeded")
	}
}

func TestMissingFileIsEmptyUntilFirstWrite(t *testing.T) {
	path := tempPath(t)
	rs, _ := open(t, path)
	want(t, "List of a missing file", list(t, rs, "stem"))
	if n, err := rs.Prune(t.Context(), "stem", t0); err != nil || n != 0 {
		t.Errorf("Prune of a missing file = %d, %v", n, err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("reading created the data file: %v", err)
	}
	upsert(t, rs, rec("stem", "a", 1))
	if lines := fileLines(t, path); len(lines) != 1 {
		t.Errorf("file has %d lines after the first write, want 1", len(lines))
	}
	// A file deleted behind the store's back is an empty store again.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	want(t, "List after the file was removed", list(t, rs, "stem"))
	upsert(t, rs, rec("stem", "b", 1))
	want(t, "List after rewrite", list(t, rs, "stem"), "b@1")
}

func TestClosed(t *testing.T) {
	rs, _ := open(t, tempPath(t))
	if err := rs.Close(); err != nil {
		t.Fatal(err)
	}
	if err := rs.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if _, err := rs.Upsert(t.Context(), rec("stem", "a", 1)); !errors.Is(err, stemdriver.ErrClosed) {
		t.Errorf("Upsert after Close = %v, want ErrClosed", err)
	}
}

func TestCorruptLinesAreReportedAndSkipped(t *testing.T) {
	path := tempPath(t)
	content := line(t, rec("stem", "a", 1)) +
		"{not json\n" +
		`{"namespace":"stem","taskId":"b","version":0}` + "\n" +
		line(t, rec("stem", "c", 1)) +
		"   \n" +
		line(t, rec("stem", "b", 2)) +
		`[1,2]` + "\r\n"
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	rs, logs := open(t, path)
	want(t, "List", list(t, rs, "stem"), "a@1", "b@2", "c@1")
	want(t, "warnings", logs.warnings(),
		"stem: skipping corrupt revoke record line=2",
		"stem: skipping corrupt revoke record line=3",
		"stem: skipping corrupt revoke record line=7")
	for _, e := range logs.entries() {
		if e.attrs["path"] != path {
			t.Errorf("warning %q has path %v, want %s", e.msg, e.attrs["path"], path)
		}
		if e.attrs["error"] == nil {
			t.Errorf("warning %q says nothing of the fault", e.msg)
		}
	}

	// Reading on, and appends by another handle, do not report the same
	// lines again.
	other, _ := open(t, path)
	upsert(t, other, rec("stem", "d", 1))
	want(t, "List after another handle's append", list(t, rs, "stem"), "a@1", "b@2", "c@1", "d@1")
	if n := len(logs.warnings()); n != 3 {
		t.Errorf("%d warnings after more reads, want still 3", n)
	}
}

func TestTruncatedLastLine(t *testing.T) {
	path := tempPath(t)
	truncated := `{"namespace":"stem","taskId":"c","vers`
	if err := os.WriteFile(path, []byte(line(t, rec("stem", "a", 1))+line(t, rec("stem", "b", 1))+truncated), 0o644); err != nil {
		t.Fatal(err)
	}
	rs, logs := open(t, path)
	want(t, "List", list(t, rs, "stem"), "a@1", "b@1")
	want(t, "warnings", logs.warnings(), "stem: skipping truncated revoke record line=3")
	want(t, "List again", list(t, rs, "stem"), "a@1", "b@1")

	// The next append starts on a fresh line rather than gluing its record
	// to the fragment.
	upsert(t, rs, rec("stem", "d", 1))
	lines := fileLines(t, path)
	if len(lines) != 4 || lines[2] != truncated || lines[3]+"\n" != line(t, rec("stem", "d", 1)) {
		t.Fatalf("file after append:\n%s", strings.Join(lines, "\n"))
	}
	want(t, "List after append", list(t, rs, "stem"), "a@1", "b@1", "d@1")
	if n := len(logs.warnings()); n != 1 {
		t.Errorf("%d warnings after the fragment was completed, want still 1", n)
	}
	// A fresh reader sees line 3 as an ordinary corrupt line.
	rs2, logs2 := open(t, path)
	want(t, "List by a new handle", list(t, rs2, "stem"), "a@1", "b@1", "d@1")
	want(t, "new handle's warnings", logs2.warnings(), "stem: skipping corrupt revoke record line=3")
}

func TestWholeLastLineWithoutNewline(t *testing.T) {
	path := tempPath(t)
	last := strings.TrimSuffix(line(t, rec("stem", "b", 1)), "\n")
	if err := os.WriteFile(path, []byte(line(t, rec("stem", "a", 1))+last), 0o644); err != nil {
		t.Fatal(err)
	}
	rs, logs := open(t, path)
	want(t, "List", list(t, rs, "stem"), "a@1", "b@1")
	upsert(t, rs, rec("stem", "b", 2), rec("stem", "c", 1))
	want(t, "List after append", list(t, rs, "stem"), "a@1", "b@2", "c@1")
	if n := len(fileLines(t, path)); n != 4 {
		t.Errorf("file has %d lines, want 4", n)
	}
	if w := logs.warnings(); len(w) != 0 {
		t.Errorf("warnings: %q", w)
	}
}

func TestPruneCompacts(t *testing.T) {
	path := tempPath(t)
	rs, _ := open(t, path)
	// A second handle indexes the file before the compaction, and must
	// notice that the file was replaced.
	other, _ := open(t, path)
	for v := int64(1); v <= 3; v++ {
		upsert(t, rs, rec("stem", "a", v))
	}
	upsert(t, rs,
		expiring(rec("stem", "b", 1), t0.Add(-time.Minute)),
		expiring(rec("stem", "c", 1), t0.Add(time.Hour)),
		expiring(rec("other", "d", 1), t0.Add(-time.Minute)))
	want(t, "other handle's List", list(t, other, "stem"), "a@3", "b@1", "c@1")
	before, _ := os.Stat(path)

	if n, err := rs.Prune(t.Context(), "stem", t0); err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1, nil", n, err)
	}
	after, _ := os.Stat(path)
	if os.SameFile(before, after) {
		t.Fatal("Prune did not replace the file")
	}
	if after.Mode() != before.Mode() {
		t.Errorf("compaction changed the mode from %v to %v", before.Mode(), after.Mode())
	}
	var got []string
	for _, l := range fileLines(t, path) {
		var r stemtype.RevokeRecord
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("compacted line %q: %v", l, err)
		}
		got = append(got, strings.TrimSpace(fmt.Sprintf("%s/%s@%d %s", r.Namespace, r.TaskID, r.Version, r.Kind)))
	}
	slices.Sort(got)
	// The pruned record leaves its tombstone.
	want(t, "compacted file", got, "other/d@1", "stem/a@3", "stem/b@1 tombstone", "stem/c@1")
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 2 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %q, want the data and lock files only", names)
	}

	want(t, "List after Prune", list(t, rs, "stem"), "a@3", "c@1")
	// Grow the new file past the length of the old one, so that only its
	// identity tells the other handle it is a different file.
	for i := range 5 {
		upsert(t, rs, rec("stem", fmt.Sprintf("e%d", i), 1))
	}
	if st, _ := os.Stat(path); st.Size() <= before.Size() {
		t.Fatalf("new file has %d bytes, want more than the old %d", st.Size(), before.Size())
	}
	want(t, "other handle's List after Prune", list(t, other, "stem"), "a@3", "c@1", "e0@1", "e1@1", "e2@1", "e3@1", "e4@1")
	out := upsert(t, other, rec("stem", "a", 2), rec("stem", "a", 4))
	if out[0].Version != 4 || out[1].Version != 5 {
		t.Errorf("other handle's Upsert after compaction returned versions %d, %d; want 4, 5", out[0].Version, out[1].Version)
	}
	want(t, "List after the other handle's write", list(t, rs, "stem"), "a@5", "c@1", "e0@1", "e1@1", "e2@1", "e3@1", "e4@1")
	rs3, _ := open(t, path)
	want(t, "List by a new handle", list(t, rs3, "stem"), "a@5", "c@1", "e0@1", "e1@1", "e2@1", "e3@1", "e4@1")
	want(t, "List(other) by a new handle", list(t, rs3, "other"), "d@1")
}

func TestCompactionPreservesCorruptLines(t *testing.T) {
	path := tempPath(t)
	long := strings.Repeat("z", maxLine+100)
	content := line(t, rec("stem", "a", 1)) +
		"garbage one\n" +
		line(t, rec("stem", "a", 2)) +
		`{"namespace":"","taskId":"x","version":1}` + "\n" +
		long + "\n" +
		line(t, rec("stem", "b", 1)) +
		`{"trunc`
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	rs, logs := open(t, path)
	want(t, "List", list(t, rs, "stem"), "a@2", "b@1")
	want(t, "warnings", logs.warnings(),
		"stem: skipping corrupt revoke record line=2",
		"stem: skipping corrupt revoke record line=4",
		"stem: skipping corrupt revoke record line=5",
		"stem: skipping truncated revoke record line=7")

	if n, err := rs.Prune(t.Context(), "stem", t0); err != nil || n != 0 {
		t.Fatalf("Prune = %d, %v; want 0, nil", n, err)
	}
	if n := len(fileLines(t, path)); n != 2 {
		t.Errorf("compacted file has %d lines, want 2", n)
	}
	corrupt := fileLines(t, path+".corrupt")
	if len(corrupt) != 5 || !strings.HasPrefix(corrupt[0], "# stem: corrupt lines of "+path) {
		t.Fatalf("corrupt file has %d lines, want a header and 4", len(corrupt))
	}
	want(t, "preserved lines", corrupt[1:],
		"2\tgarbage one",
		"4\t"+`{"namespace":"","taskId":"x","version":1}`,
		"5\t"+long,
		"7\t"+`{"trunc`)

	// A later compaction appends to the corrupt file, and keeps the
	// records it moved before.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("second garbage\n")
	f.Close()
	upsert(t, rs, rec("stem", "a", 3))
	if _, err := rs.Prune(t.Context(), "stem", t0); err != nil {
		t.Fatal(err)
	}
	corrupt = fileLines(t, path+".corrupt")
	if len(corrupt) != 7 || !strings.HasPrefix(corrupt[5], "# stem:") || corrupt[6] != "3\tsecond garbage" {
		t.Errorf("corrupt file after a second compaction:\n%s", strings.Join(corrupt[5:], "\n"))
	}
	want(t, "List after both compactions", list(t, rs, "stem"), "a@3", "b@1")
}

func TestUpsertCompactsAGrownFile(t *testing.T) {
	path := tempPath(t)
	rs, _ := open(t, path)
	upsert(t, rs, rec("other", "keep", 1))
	maxLines := 0
	v := int64(0)
	// Two live records: the file may grow to 2*2+1000 lines, then the
	// next Upsert compacts it.
	for range 110 {
		batch := make([]stemtype.RevokeRecord, 10)
		for i := range batch {
			v++
			batch[i] = rec("stem", "a", v)
		}
		upsert(t, rs, batch...)
		maxLines = max(maxLines, len(fileLines(t, path)))
	}
	if maxLines > 2*2+compactSlack+10 {
		t.Errorf("file grew to %d lines", maxLines)
	}
	if n := len(fileLines(t, path)); n >= 1000 {
		t.Errorf("file has %d lines: it was never compacted", n)
	}
	want(t, "List(stem)", list(t, rs, "stem"), "a@1100")
	want(t, "List(other)", list(t, rs, "other"), "keep@1")
	rs2, _ := open(t, path)
	want(t, "List(stem) by a new handle", list(t, rs2, "stem"), "a@1100")
}

func TestLockWaitEndsWithContext(t *testing.T) {
	path := tempPath(t)
	rs, _ := open(t, path)
	upsert(t, rs, rec("stem", "a", 1))
	// Another process's writer, as far as flock can tell.
	holder, err := os.Open(path + ".lock")
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := syscall.Flock(int(holder.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := rs.List(ctx, "stem"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("List while the lock is held = %v, want a deadline error", err)
	}
	if _, err := rs.Upsert(ctx, rec("stem", "b", 1)); err == nil {
		t.Fatal("Upsert with an ended context succeeded")
	}
	syscall.Flock(int(holder.Fd()), syscall.LOCK_UN)
	want(t, "List after the lock was released", list(t, rs, "stem"), "a@1")
}

func TestConcurrentHandlesInOneProcess(t *testing.T) {
	path := tempPath(t)
	handles := make([]*Revokes, 3)
	logs := make([]*logRecorder, 3)
	for i := range handles {
		handles[i], logs[i] = open(t, path)
	}
	const goroutines, perG, tasks = 6, 100, 15
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		assigned = map[string]int64{} // task -> highest version assigned
	)
	for g := range goroutines {
		rs := handles[g%len(handles)]
		wg.Go(func() {
			for i := range perG {
				r := rec("stem", fmt.Sprintf("t%d", i%tasks), int64(i*goroutines+g+1))
				own := expiring(rec(fmt.Sprintf("g%d", g), fmt.Sprintf("o%d", i), 1), t0.Add(time.Hour))
				out, err := rs.Upsert(t.Context(), r, own)
				if err != nil {
					t.Errorf("goroutine %d: Upsert: %v", g, err)
					return
				}
				if out[0].Version < r.Version {
					t.Errorf("goroutine %d: Upsert of %s@%d returned version %d", g, r.TaskID, r.Version, out[0].Version)
				}
				mu.Lock()
				assigned[r.TaskID] = max(assigned[r.TaskID], out[0].Version)
				mu.Unlock()
				if i%25 == 24 {
					// Compacts (superseded lines) without deleting.
					if _, err := rs.Prune(t.Context(), "stem", t0); err != nil {
						t.Errorf("goroutine %d: Prune: %v", g, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	fresh, _ := open(t, path)
	for _, rs := range append(handles, fresh) {
		checkConverged(t, rs, goroutines, perG, tasks, assigned)
	}
	for i, l := range logs {
		if w := l.warnings(); len(w) != 0 {
			t.Errorf("handle %d warned: %q", i, w)
		}
	}
}

// checkConverged checks the outcome of writers w in [0, writers), each of
// which upserted, for i in [0, perWriter), task "t<i%tasks>" of namespace
// stem at version i*writers+w+1, and "o<i>" of namespace "g<w>". Each task
// of stem must hold the highest version assigned to it, as the writers
// reported it in assigned.
func checkConverged(t *testing.T, rs *Revokes, writers, perWriter, tasks int, assigned map[string]int64) {
	t.Helper()
	var wantStem []string
	for task := range tasks {
		var proposed int
		for w := range writers {
			for i := task; i < perWriter; i += tasks {
				proposed = max(proposed, i*writers+w+1)
			}
		}
		id := fmt.Sprintf("t%d", task)
		if assigned[id] < int64(proposed) {
			t.Fatalf("highest version assigned to %s is %d, below the highest proposed, %d", id, assigned[id], proposed)
		}
		wantStem = append(wantStem, fmt.Sprintf("%s@%d", id, assigned[id]))
	}
	slices.Sort(wantStem)
	want(t, "List(stem)", list(t, rs, "stem"), wantStem...)
	for w := range writers {
		got := list(t, rs, fmt.Sprintf("g%d", w))
		if len(got) != perWriter {
			t.Errorf("namespace g%d holds %d records, want %d", w, len(got), perWriter)
		}
	}
}

const (
	helperEnvPath   = "STEMFILE_TEST_HELPER_PATH"
	helperEnvWriter = "STEMFILE_TEST_HELPER_WRITER"
	helperEnvCount  = "STEMFILE_TEST_HELPER_WRITERS"
	helperPerWriter = 200
	helperTasks     = 25
)

// TestHelperProcess is one writer of TestSeparateProcesses, run in a child
// process. It does nothing in an ordinary test run.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv(helperEnvPath)
	if path == "" {
		t.Skip("helper process for TestSeparateProcesses")
	}
	w, err1 := strconv.Atoi(os.Getenv(helperEnvWriter))
	writers, err2 := strconv.Atoi(os.Getenv(helperEnvCount))
	if err := errors.Join(err1, err2); err != nil {
		t.Fatalf("helper environment: %v", err)
	}
	rs, logs := open(t, path)
	last := map[string]int64{}
	for i := range helperPerWriter {
		r := rec("stem", fmt.Sprintf("t%d", i%helperTasks), int64(i*writers+w+1))
		own := rec(fmt.Sprintf("g%d", w), fmt.Sprintf("o%d", i), 1)
		out, err := rs.Upsert(t.Context(), r, own)
		if err != nil {
			t.Fatalf("writer %d: Upsert %d: %v", w, i, err)
		}
		if out[0].Version < r.Version {
			t.Fatalf("writer %d: Upsert of %s@%d returned version %d", w, r.TaskID, r.Version, out[0].Version)
		}
		last[r.TaskID] = out[0].Version
		switch i % 20 {
		case 9:
			// What this writer wrote stays visible, or is superseded.
			recs, err := rs.List(t.Context(), "stem")
			if err != nil {
				t.Fatalf("writer %d: List: %v", w, err)
			}
			for _, got := range recs {
				if got.Version < last[got.TaskID] {
					t.Fatalf("writer %d: List shows %s@%d after it wrote version %d", w, got.TaskID, got.Version, last[got.TaskID])
				}
			}
		case 19:
			if _, err := rs.Prune(t.Context(), "stem", t0); err != nil {
				t.Fatalf("writer %d: Prune: %v", w, err)
			}
		}
	}
	if warns := logs.warnings(); len(warns) > 0 {
		t.Fatalf("writer %d: warnings: %q", w, warns)
	}
	// Report the versions assigned, for the parent's check.
	for task, v := range last {
		t.Logf("assigned %s %d", task, v)
	}
}

func TestSeparateProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	path := tempPath(t)
	const writers = 4
	type result struct {
		w   int
		err error
		out []byte
	}
	results := make(chan result, writers)
	for w := range writers {
		cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(),
			helperEnvPath+"="+path,
			helperEnvWriter+"="+strconv.Itoa(w),
			helperEnvCount+"="+strconv.Itoa(writers))
		go func() {
			out, err := cmd.CombinedOutput()
			results <- result{w, err, out}
		}()
	}
	assigned := map[string]int64{}
	reported := regexp.MustCompile(`assigned (t\d+) (\d+)`)
	for range writers {
		r := <-results
		if r.err != nil || !bytes.Contains(r.out, []byte("--- PASS: TestHelperProcess")) {
			t.Errorf("writer %d: %v\n%s", r.w, r.err, r.out)
		}
		for _, m := range reported.FindAllSubmatch(r.out, -1) {
			v, _ := strconv.ParseInt(string(m[2]), 10, 64)
			assigned[string(m[1])] = max(assigned[string(m[1])], v)
		}
	}
	if t.Failed() {
		return
	}
	rs, logs := open(t, path)
	checkConverged(t, rs, writers, helperPerWriter, helperTasks, assigned)
	if w := logs.warnings(); len(w) != 0 {
		t.Errorf("warnings reading the result: %q", w)
	}
	// Every line of the file is a whole record.
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		var r stemtype.RevokeRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil || r.Validate() != nil {
			t.Errorf("line %d is not a record: %q", n, sc.Text())
		}
	}
}

func TestPathFromURL(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{in: "file:///var/lib/stem/revokes.ndjson", want: "/var/lib/stem/revokes.ndjson"},
		{in: "FILE:///var/lib/stem/r.ndjson", want: "/var/lib/stem/r.ndjson"},
		{in: "file://localhost/var/lib/stem/r.ndjson", want: "/var/lib/stem/r.ndjson"},
		{in: "file://revokes.ndjson", want: "revokes.ndjson"},
		{in: "file://data/revokes.ndjson", want: "data/revokes.ndjson"},
		{in: "file:relative/revokes.ndjson", want: "relative/revokes.ndjson"},
		{in: "file:/abs/revokes.ndjson", want: "/abs/revokes.ndjson"},
		{in: "file:///with%20space/r%25.ndjson", want: "/with space/r%.ndjson"},
		{in: "/var/lib/stem/revokes.ndjson", want: "/var/lib/stem/revokes.ndjson"},
		{in: "relative/r%20.ndjson", want: "relative/r%20.ndjson"},
		{in: "", err: "empty"},
		{in: "file://", err: "names no path"},
		{in: "file:", err: "names no path"},
		{in: "file:///x?mode=ro", err: "query"},
		{in: "file:///x#frag", err: "query"},
		{in: "file:///bad%zz", err: "invalid URL escape"},
		{in: "redis://user:secret@host:6379/0", err: `scheme "redis"`},
		{in: "memory://", err: `scheme "memory"`},
	} {
		got, err := PathFromURL(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("PathFromURL(%q) = %q, %v; want an error containing %q", tc.in, got, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("PathFromURL(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("PathFromURL(%q) error prints the password: %v", tc.in, err)
		}
	}
}

func TestRemovedLockFileIsRecreated(t *testing.T) {
	path := tempPath(t)
	rs, logs := open(t, path)
	upsert(t, rs, rec("stem", "a", 1))
	if err := os.Remove(path + ".lock"); err != nil {
		t.Fatal(err)
	}
	other, _ := open(t, path) // creates a new lock file
	upsert(t, other, rec("stem", "b", 1))
	want(t, "List after the lock file was replaced", list(t, rs, "stem"), "a@1", "b@1")
	want(t, "warnings", logs.warnings(), "stem: revoke lock file was removed or replaced; using the new one line=<nil>")
	held, err1 := rs.lock.Stat()
	cur, err2 := os.Stat(path + ".lock")
	if err := errors.Join(err1, err2); err != nil || !os.SameFile(held, cur) {
		t.Errorf("handle does not lock the lock file now at its path (%v)", err)
	}
}

// TestDanglingSymlinkSharesTheTargetsLock: a store path that is a symlink
// to a file not created yet (a fresh install that links the configured
// path to a data directory) must resolve to the link's target, as it does
// once the target exists. Otherwise the first process locks PATH.lock and
// later ones TARGET.lock, and its compaction replaces the link with a file
// of its own: the two then write different files, and one side's revokes
// never reach the other.
func TestDanglingSymlinkSharesTheTargetsLock(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	if err := os.Mkdir(dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dataDir, "revokes.ndjson")
	link := filepath.Join(dir, "revokes.ndjson")
	if err := os.Symlink("data/revokes.ndjson", link); err != nil {
		t.Skipf("cannot create a symlink: %v", err)
	}
	early, _ := open(t, link) // the target does not exist yet
	upsert(t, early, expiring(rec("stem", "gone", 1), t0))
	late, _ := open(t, link) // the target exists now
	if early.Path() != late.Path() {
		t.Errorf("store opened before its target existed uses %s, one opened after %s", early.Path(), late.Path())
	}
	// A compaction by the early handle must keep the link a link.
	if n, err := early.Prune(t.Context(), "stem", t0.Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1 record pruned", n, err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("after a compaction %s is no longer a symlink (%v)", link, err)
	}
	upsert(t, late, rec("stem", "later", 2))
	want(t, "records seen by the handle opened before the target existed", list(t, early, "stem"), "later@2")
	if _, err := os.Stat(target); err != nil {
		t.Errorf("target: %v", err)
	}
}

// A pruned record's tombstone is a line of the file: a handle opened later
// (another process, a restart) still ignores a late write of the record,
// and a Prune past stemdriver.RevokeTombstoneRetention drops the line.
func TestTombstoneSurvivesReopen(t *testing.T) {
	path := tempPath(t)
	rs, _ := open(t, path)
	upsert(t, rs, expiring(rec("stem", "a", 5), t0.Add(-time.Minute)), rec("stem", "b", 1))
	if n, err := rs.Prune(t.Context(), "stem", t0); err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1, nil", n, err)
	}
	later, _ := open(t, path)
	if out := upsert(t, later, rec("stem", "a", 4)); out[0].Version != 0 {
		t.Errorf("late Upsert of a pruned record through a new handle stored version %d, want it ignored (0)", out[0].Version)
	}
	want(t, "List by the new handle", list(t, later, "stem"), "b@1")
	if lines := fileLines(t, path); len(lines) != 2 {
		t.Errorf("file holds %d lines after the ignored write, want 2 (b and a's tombstone): %q", len(lines), lines)
	}
	if _, err := later.Prune(t.Context(), "stem", t0.Add(stemdriver.RevokeTombstoneRetention)); err != nil {
		t.Fatal(err)
	}
	if lines := fileLines(t, path); len(lines) != 1 {
		t.Errorf("file holds %d lines after the tombstone expired, want 1: %q", len(lines), lines)
	}
	upsert(t, rs, rec("stem", "a", 4))
	want(t, "List once the tombstone expired", list(t, rs, "stem"), "a@4", "b@1")
}
