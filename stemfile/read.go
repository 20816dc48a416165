package stemfile

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// refresh brings the view up to date with the file at r.path: it reads only
// the bytes appended since the last read when the file is the one already
// indexed, and the whole file when it is new (the first read, or a
// compaction elsewhere replaced it) or shorter than what was read (someone
// truncated it). The caller holds the flock.
func (r *Revokes) refresh() error {
	v := &r.view
	fi, err := os.Stat(r.path)
	if errors.Is(err, fs.ErrNotExist) {
		if v.f != nil {
			r.invalidate()
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("stem: revoke file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("stem: revoke file %s is not a regular file (mode %s)", r.path, fi.Mode())
	}
	if v.f == nil || !os.SameFile(fi, v.fi) || fi.Size() < v.offset+v.tailLen {
		r.invalidate()
		f, err := os.Open(r.path)
		if err != nil {
			return fmt.Errorf("stem: revoke file: %w", err)
		}
		if fi, err = f.Stat(); err != nil {
			f.Close()
			return fmt.Errorf("stem: revoke file: %w", err)
		}
		v.f, v.fi = f, fi
	}
	if fi.Size() == v.offset+v.tailLen {
		return nil
	}
	return r.scan(fi.Size())
}

// scan reads the data file from the view's offset up to size and applies
// every complete line, then the unterminated last line if there is one.
func (r *Revokes) scan(size int64) error {
	v := &r.view
	if v.index == nil {
		v.index = make(map[string]map[string]stemtype.RevokeRecord)
	}
	lr := newLineReader(io.NewSectionReader(v.f, v.offset, size-v.offset))
	for {
		start := v.offset
		line, n, complete, err := lr.next()
		if err == io.EOF {
			v.tailLen, v.tailCorrupt = 0, false
			return nil
		}
		if err != nil {
			return fmt.Errorf("stem: read revoke file %s at line %d: %w", r.path, v.lines+1, err)
		}
		lineNo := v.lines + 1
		rec, tomb, blank, perr := decodeLine(line, n)
		if !complete {
			// Only a crashed writer (or a hand edit) leaves a last line
			// without its newline. Apply it if it parses (it is then
			// whole), and read it again next time: the next append
			// completes it.
			v.tailLen, v.tailCorrupt = n, perr != nil
			switch {
			case perr != nil && v.warnedTail != start:
				v.warnedTail = start
				r.log.Warn("stem: skipping truncated revoke record", "path", r.path, "line", lineNo, "error", perr)
			case perr == nil && tomb != nil:
				v.putTomb(rec.Namespace, rec.TaskID, *tomb)
			case perr == nil && !blank:
				v.put(rec)
			}
			return nil
		}
		v.offset += n
		v.lines++
		switch {
		case perr != nil:
			v.corrupt++
			if v.warnedTail != start {
				r.log.Warn("stem: skipping corrupt revoke record", "path", r.path, "line", lineNo, "error", perr)
			}
		case tomb != nil:
			v.putTomb(rec.Namespace, rec.TaskID, *tomb)
		case !blank:
			v.put(rec)
		}
	}
}

// put stores rec when its version is higher than the one held for its task
// (or than its task's tombstone, when no record is held), and returns the
// record held afterwards and whether rec won. Reading the file applies
// every line through it; Upsert assigns versions that always win.
func (v *view) put(rec stemtype.RevokeRecord) (stemtype.RevokeRecord, bool) {
	if v.index == nil {
		v.index = make(map[string]map[string]stemtype.RevokeRecord)
	}
	ns := v.index[rec.Namespace]
	if ns == nil {
		ns = make(map[string]stemtype.RevokeRecord)
		v.index[rec.Namespace] = ns
	}
	cur, ok := ns[rec.TaskID]
	if ok && rec.Version <= cur.Version {
		return cur, false
	}
	if tomb, dead := v.tombs[rec.Namespace][rec.TaskID]; dead {
		if !ok && rec.Version <= tomb.version {
			return rec, false
		}
		v.dropTomb(rec.Namespace, rec.TaskID)
	}
	ns[rec.TaskID] = rec
	if !ok {
		v.live++
	}
	return rec, true
}

// putTomb applies the tombstone of a pruned record: it deletes the task's
// record if it is not newer, and keeps the newest tombstone of the task.
func (v *view) putTomb(namespace, task string, t tombstone) {
	if cur, ok := v.index[namespace][task]; ok {
		if cur.Version > t.version {
			return
		}
		delete(v.index[namespace], task)
		v.live--
	}
	if v.tombs == nil {
		v.tombs = make(map[string]map[string]tombstone)
	}
	ns := v.tombs[namespace]
	if ns == nil {
		ns = make(map[string]tombstone)
		v.tombs[namespace] = ns
	}
	cur, ok := ns[task]
	if ok && (cur.version > t.version || cur.version == t.version && !cur.until.Before(t.until)) {
		return
	}
	ns[task] = t
	if !ok {
		v.ntombs++
	}
}

// dropTomb forgets the tombstone of a task, if it has one.
func (v *view) dropTomb(namespace, task string) {
	if _, ok := v.tombs[namespace][task]; ok {
		delete(v.tombs[namespace], task)
		v.ntombs--
	}
}

// tombstone is what a Prune keeps of a record it deletes (see
// stemdriver.RevokeStore): its version, until the tombstone itself expires.
type tombstone struct {
	version int64
	until   time.Time
}

// tombKind is the kind of a tombstone's line. Records never have it, and a
// stem that predates tombstones reads the line as corrupt (an unknown
// kind), never as a revoke.
const tombKind = "tombstone"

// tombLine is the line of a tombstone.
type tombLine struct {
	Namespace string    `json:"namespace"`
	TaskID    string    `json:"taskId"`
	Kind      string    `json:"kind"`
	Version   int64     `json:"version"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// encodeTomb returns the line of a tombstone, without its newline.
func encodeTomb(namespace, task string, t tombstone) ([]byte, error) {
	return json.Marshal(tombLine{Namespace: namespace, TaskID: task, Kind: tombKind, Version: t.version, ExpiresAt: t.until.UTC()})
}

// decodeLine decodes one line (without its newline; nil when it was longer
// than maxLine, n bytes in all). It reports blank lines, which are skipped
// and not corrupt, returns a tombstone's line as its namespace and task in
// rec and the tombstone in tomb, and returns an error for a line that is
// not one valid record or tombstone.
func decodeLine(line []byte, n int64) (rec stemtype.RevokeRecord, tomb *tombstone, blank bool, err error) {
	if line == nil && n > 0 {
		return rec, nil, false, fmt.Errorf("line longer than %d bytes", maxLine)
	}
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(bytes.TrimSpace(line)) == 0 {
		return rec, nil, true, nil
	}
	if err := json.Unmarshal(line, &rec); err != nil {
		return rec, nil, false, err
	}
	if rec.Kind == tombKind {
		var tl tombLine
		if err := json.Unmarshal(line, &tl); err != nil {
			return rec, nil, false, err
		}
		switch {
		case tl.Namespace == "" || tl.TaskID == "":
			return rec, nil, false, errors.New("stem: revoke tombstone without namespace or taskId")
		case tl.Version <= 0:
			return rec, nil, false, fmt.Errorf("stem: revoke tombstone for task %q has non-positive version %d", tl.TaskID, tl.Version)
		case tl.ExpiresAt.IsZero():
			return rec, nil, false, fmt.Errorf("stem: revoke tombstone for task %q has no expiresAt", tl.TaskID)
		}
		return stemtype.RevokeRecord{Namespace: tl.Namespace, TaskID: tl.TaskID}, &tombstone{version: tl.Version, until: tl.ExpiresAt.UTC()}, false, nil
	}
	if err := rec.Validate(); err != nil {
		return rec, nil, false, err
	}
	rec.IssuedAt, rec.ExpiresAt = rec.IssuedAt.UTC(), rec.ExpiresAt.UTC()
	return rec, nil, false, nil
}

// lineReader splits a file into lines without holding more than maxLine
// bytes of one line in memory.
type lineReader struct {
	br      *bufio.Reader
	scratch []byte
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, 64<<10)}
}

// next returns the next line without its newline, the bytes it took in the
// file (newline included), and whether it ended in a newline; io.EOF when
// nothing is left. A line longer than maxLine comes back as nil with its
// length. The returned slice is valid until the next call.
func (lr *lineReader) next() (line []byte, n int64, complete bool, err error) {
	chunk, err := lr.br.ReadSlice('\n')
	if err == nil {
		return chunk[:len(chunk)-1], int64(len(chunk)), true, nil
	}
	if errors.Is(err, bufio.ErrBufferFull) {
		lr.scratch = append(lr.scratch[:0], chunk...)
		n = int64(len(chunk))
		for {
			chunk, err = lr.br.ReadSlice('\n')
			n += int64(len(chunk))
			if lr.scratch != nil && len(lr.scratch)+len(chunk) <= maxLine+1 {
				lr.scratch = append(lr.scratch, chunk...)
			} else {
				lr.scratch = nil // too long: count it, keep none of it
			}
			if !errors.Is(err, bufio.ErrBufferFull) {
				break
			}
		}
		switch {
		case err == nil && lr.scratch != nil:
			return lr.scratch[:len(lr.scratch)-1], n, true, nil
		case err == nil:
			return nil, n, true, nil
		case err == io.EOF && len(lr.scratch) > maxLine:
			return nil, n, false, nil // maxLine+1 bytes: only room for a newline was left
		case err == io.EOF:
			return lr.scratch, n, false, nil
		}
		return nil, 0, false, err
	}
	if err == io.EOF && len(chunk) > 0 {
		return chunk, int64(len(chunk)), false, nil
	}
	return nil, 0, false, err
}
