package stemfile

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// fileSeeds are lines as Upsert writes them (json.Marshal of a record),
// then damaged ones.
func fileSeeds(f *testing.F) [][]byte {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	var out [][]byte
	for _, r := range []stemtype.RevokeRecord{
		{Namespace: "ns", TaskID: "t1", Version: 3, IssuedAt: now, Terminate: true, KillAfterMs: 100, Reason: "why"},
		{Namespace: "ns", TaskID: stemtype.NameRevokeKey("mail"), Kind: stemtype.RevokeKindName, Name: "mail", Version: 4, IssuedAt: now,
			ExpiresAt: now.Add(time.Hour)},
	} {
		b, err := json.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	for _, s := range []string{"", "   \r", `{"namespace":"ns","taskId":"t1","kind":"tombstone","version":5,"expiresAt":"2026-12-01T00:00:00Z"}`,
		`{"namespace":"ns","taskId":"t1","kind":"tombstone","version":5}`, `{"namespace":"ns","taskId":"t","version":0}`, `{"namespace":"ns"`, "\x00\xff",
		`{"namespace":"ns","taskId":"t","version":1,"issuedAt":"2026-11-30T12:00:00+02:00"}`, `[1]`} {
		out = append(out, []byte(s))
	}
	return out
}

// A line of the revoke file decodes to a valid record in UTC, or is blank,
// or is refused with an error; a record read encodes back to a line that
// reads the same.
func FuzzDecodeLine(f *testing.F) {
	for _, s := range fileSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		rec, tomb, blank, err := decodeLine(line, int64(len(line)+1))
		switch {
		case err != nil:
			if blank || tomb != nil || err.Error() == "" {
				t.Fatalf("%q: blank %v, tombstone %+v with error %v", line, blank, tomb, err)
			}
		case blank:
			if len(bytes.TrimSpace(line)) != 0 || tomb != nil {
				t.Fatalf("%q: reported blank", line)
			}
		case tomb != nil:
			// A tombstone names its record and reads back the same.
			if rec.Namespace == "" || rec.TaskID == "" || tomb.version <= 0 || tomb.until.IsZero() || tomb.until.Location() != time.UTC {
				t.Fatalf("%q: tombstone %+v of %+v", line, tomb, rec)
			}
			b, err := encodeTomb(rec.Namespace, rec.TaskID, *tomb)
			if err != nil {
				return // a year past 9999
			}
			again, tomb2, _, err := decodeLine(b, int64(len(b)+1))
			if err != nil || tomb2 == nil || *tomb2 != *tomb || again.TaskID != rec.TaskID || again.Namespace != rec.Namespace {
				t.Fatalf("%q: %s reads back as %+v %+v (%v)", line, b, again, tomb2, err)
			}
		default:
			if err := rec.Validate(); err != nil {
				t.Fatalf("%q: accepted an invalid record: %v", line, err)
			}
			if rec.IssuedAt.Location() != time.UTC || rec.ExpiresAt.Location() != time.UTC {
				t.Fatalf("%q: times not in UTC: %+v", line, rec)
			}
			b, err := json.Marshal(rec)
			if err != nil {
				return // a year past 9999 decodes and does not encode
			}
			again, tomb, blank, err := decodeLine(b, int64(len(b)+1))
			if err != nil || blank || tomb != nil || !again.IssuedAt.Equal(rec.IssuedAt) || !again.ExpiresAt.Equal(rec.ExpiresAt) {
				t.Fatalf("%q: %s reads back as %+v (%v)", line, b, again, err)
			}
			again.IssuedAt, again.ExpiresAt = rec.IssuedAt, rec.ExpiresAt
			if again != rec {
				t.Fatalf("%q: %+v reads back as %+v", line, rec, again)
			}
		}
	})
}

// The line reader splits any stream into lines that account for every
// byte: the lines and their newlines concatenate to the stream, and a line
// longer than maxLine comes back as nil with its length.
func FuzzLineReader(f *testing.F) {
	f.Add([]byte("a\nb\r\n\n"), uint16(0))
	f.Add([]byte("no newline"), uint16(0))
	f.Add([]byte("x\n"), uint16(70)) // 70 KiB of y after: past the reader's buffer
	f.Fuzz(func(t *testing.T, data []byte, padKiB uint16) {
		if padKiB > 0 {
			data = append(data, bytes.Repeat([]byte("y"), int(padKiB%1100)<<10)...)
		}
		lr := newLineReader(bytes.NewReader(data))
		var total int64
		for {
			line, n, complete, err := lr.next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			part := data[total : total+n]
			want := part
			if complete {
				if part[len(part)-1] != '\n' {
					t.Fatalf("complete line %q does not end in a newline", part)
				}
				want = part[:len(part)-1]
			} else if total+n != int64(len(data)) {
				t.Fatalf("incomplete line at %d is not the last", total)
			}
			switch {
			case len(want) > maxLine && line != nil:
				t.Fatalf("line of %d bytes returned whole", len(want))
			case len(want) <= maxLine && !bytes.Equal(line, want):
				t.Fatalf("line %q, want %q", line, want)
			}
			total += n
		}
		if total != int64(len(data)) {
			t.Fatalf("read %d bytes of %d", total, len(data))
		}
	})
}

// Whatever the revoke file holds (a file other programs can write), List
// never fails on its content: it returns valid records and skips the
// rest, naming the line in a warning.
func FuzzRevokeFile(f *testing.F) {
	var file []byte
	for _, s := range fileSeeds(f) {
		file = append(append(file, s...), '\n')
		f.Add(s)
	}
	f.Add(file)
	f.Fuzz(func(t *testing.T, content []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "revokes.ndjson")
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		var logs bytes.Buffer
		r, err := OpenRevokes(path, stemdriver.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		recs, err := r.List(context.Background(), "ns")
		if err != nil {
			t.Fatalf("List of %q: %v", content, err)
		}
		for _, rec := range recs {
			if err := rec.Validate(); err != nil || rec.Namespace != "ns" {
				t.Fatalf("%q: listed %+v (%v)", content, rec, err)
			}
		}
		if r.view.corrupt > 0 && !strings.Contains(logs.String(), "skipping corrupt revoke record") {
			t.Fatalf("%q: %d corrupt lines and no warning: %s", content, r.view.corrupt, logs.String())
		}
	})
}

// PathFromURL returns a path or an error that names the URL without its
// password.
func FuzzPathFromURL(f *testing.F) {
	for _, s := range []string{"file:///var/lib/stem/r.ndjson", "file://localhost/x", "file:rel/x", "/abs", "rel",
		"redis://u:secret@h/0", "file://u:secret@h/x?q=1", "file:%zz", "file://", "", "FILE:///x#frag", "s3://k:pw@bucket/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, u string) {
		p, err := PathFromURL(u)
		if err != nil {
			if p != "" {
				t.Fatalf("%q: path %q with error %v", u, p, err)
			}
			// The message must not depend on the password (a password
			// that stands elsewhere in the URL too, as the host "000" of
			// "A://:000@000", proves nothing).
			if other, changed := testutil.OtherPassword(u); changed {
				_, err2 := PathFromURL(other)
				if err2 == nil || testutil.LeaksPassword(u, err.Error(), other, err2.Error()) {
					t.Fatalf("the message depends on the password:\n%q: %v\n%q: %v", u, err, other, err2)
				}
			}
			return
		}
		if p == "" {
			t.Fatalf("%q: empty path", u)
		}
	})
}
