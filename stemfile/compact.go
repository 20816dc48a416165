package stemfile

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// pruning is what a Prune's compaction drops: the records of namespace
// that expired at or before now, which leave tombstones, and the
// namespace's tombstones that expired.
type pruning struct {
	namespace string
	now       time.Time
}

// drops reports whether the compaction drops rec.
func (p *pruning) drops(rec stemtype.RevokeRecord) bool {
	return p != nil && rec.Namespace == p.namespace && rec.Expired(p.now)
}

// dropsTomb reports whether the compaction drops a tombstone of namespace.
func (p *pruning) dropsTomb(namespace string, t tombstone) bool {
	return p != nil && namespace == p.namespace && !p.now.Before(t.until)
}

// compact rewrites the data file with the winning record of every task and
// every tombstone, except those prune drops (nil: none), moving corrupt
// lines to PATH.corrupt first, and returns how many records it dropped.
// The caller holds the exclusive lock and has just refreshed the view,
// which on success describes the new file. On failure the data file is
// unchanged.
func (r *Revokes) compact(prune *pruning) (dropped int, err error) {
	v := &r.view
	if v.f == nil {
		return 0, nil
	}
	dir := filepath.Dir(r.path)
	// Under the exclusive lock no other compaction runs: temporary files
	// left here are orphans of a process killed mid-compaction.
	if orphans, _ := filepath.Glob(r.path + ".compact-*"); len(orphans) > 0 {
		for _, o := range orphans {
			os.Remove(o)
		}
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(r.path)+".compact-*")
	if err != nil {
		return 0, fmt.Errorf("stem: compact revoke file: %w", err)
	}
	renamed := false
	defer func() {
		if !renamed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	w := bufio.NewWriterSize(tmp, 64<<10)
	written := 0
	var size int64
	writeLine := func(b []byte) error {
		w.Write(b)
		if err := w.WriteByte('\n'); err != nil {
			return fmt.Errorf("stem: compact revoke file: write %s: %w", tmp.Name(), err)
		}
		written++
		size += int64(len(b)) + 1
		return nil
	}
	// The tombstones the file holds afterwards: those kept, and one for
	// every record dropped.
	tombs := make(map[string]map[string]tombstone, len(v.tombs))
	ntombs := 0
	addTomb := func(namespace, task string, t tombstone) {
		ns := tombs[namespace]
		if ns == nil {
			ns = make(map[string]tombstone)
			tombs[namespace] = ns
		}
		ns[task] = t
		ntombs++
	}
	for name, ns := range v.tombs {
		for task, t := range ns {
			if !prune.dropsTomb(name, t) {
				addTomb(name, task, t)
			}
		}
	}
	for _, ns := range v.index {
		for _, rec := range ns {
			if prune.drops(rec) {
				dropped++
				addTomb(rec.Namespace, rec.TaskID, tombstone{version: rec.Version, until: prune.now.Add(stemdriver.RevokeTombstoneRetention).UTC()})
				continue
			}
			b, err := json.Marshal(rec)
			if err != nil {
				return 0, fmt.Errorf("stem: compact revoke file %s: encode record for task %q: %w", r.path, rec.TaskID, err)
			}
			if err := writeLine(b); err != nil {
				return 0, err
			}
		}
	}
	for name, ns := range tombs {
		for task, t := range ns {
			b, err := encodeTomb(name, task, t)
			if err != nil {
				return 0, fmt.Errorf("stem: compact revoke file %s: encode tombstone for task %q: %w", r.path, task, err)
			}
			if err := writeLine(b); err != nil {
				return 0, err
			}
		}
	}
	if err := w.Flush(); err != nil {
		return 0, fmt.Errorf("stem: compact revoke file: write %s: %w", tmp.Name(), err)
	}
	if v.corrupt > 0 || v.tailCorrupt {
		if err := r.preserveCorrupt(); err != nil {
			return 0, err
		}
	}
	// The new file keeps the old one's mode and owner, so that whoever
	// could append before still can (the CLI may run as another user than
	// the workers).
	cur, err := v.f.Stat() // fresh: mode and owner may have changed since the view's
	if err != nil {
		return 0, fmt.Errorf("stem: compact revoke file: %w", err)
	}
	if err := tmp.Chmod(cur.Mode().Perm()); err != nil {
		return 0, fmt.Errorf("stem: compact revoke file: %w", err)
	}
	if uid, gid, ok := fileOwner(cur); ok {
		if err := tmp.Chown(uid, gid); err != nil {
			return 0, fmt.Errorf("stem: compact revoke file %s: cannot keep its owner %d:%d, compaction skipped: %w", r.path, uid, gid, err)
		}
	}
	if err := tmp.Sync(); err != nil {
		return 0, fmt.Errorf("stem: compact revoke file: fsync %s: %w", tmp.Name(), err)
	}
	// The new file is locked before it takes the path, so that the lock
	// this operation holds on the data file carries over to it.
	newLock, err := os.Open(tmp.Name())
	if err != nil {
		return 0, fmt.Errorf("stem: compact revoke file: %w", err)
	}
	if err := flock(context.Background(), newLock, lockExclusive); err != nil {
		newLock.Close()
		return 0, fmt.Errorf("stem: compact revoke file: %w", err)
	}
	if err := os.Rename(tmp.Name(), r.path); err != nil {
		newLock.Close()
		return 0, fmt.Errorf("stem: compact revoke file: %w", err)
	}
	renamed = true
	if r.data != nil {
		r.data.Close()
	}
	r.data = newLock
	// The data file is replaced: from here on, report errors but keep the
	// temporary file, now the data file, in place.
	fi, statErr := tmp.Stat()
	v.f.Close()
	v.f, v.fi = tmp, fi
	v.offset, v.lines, v.corrupt = size, written, 0
	v.tailLen, v.tailCorrupt, v.warnedTail = 0, false, -1
	if dropped > 0 {
		for _, ns := range v.index {
			for id, rec := range ns {
				if prune.drops(rec) {
					delete(ns, id)
				}
			}
		}
		v.live -= dropped
	}
	v.tombs, v.ntombs = tombs, ntombs
	for name, ns := range v.index {
		if len(ns) == 0 {
			delete(v.index, name)
		}
	}
	if statErr != nil {
		r.invalidate()
		return dropped, fmt.Errorf("stem: compact revoke file: %w", statErr)
	}
	if err := syncDir(dir); err != nil {
		return dropped, err
	}
	r.log.Debug("stem: compacted revoke file", "path", r.path, "records", written, "dropped", dropped)
	return dropped, nil
}

// preserveCorrupt appends every corrupt line of the data file, its
// unterminated last line included, to PATH.corrupt, each prefixed with its
// line number and a tab, and fsyncs it.
func (r *Revokes) preserveCorrupt() (err error) {
	v := &r.view
	out, err := os.OpenFile(r.corruptPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, v.fi.Mode().Perm())
	if err != nil {
		return fmt.Errorf("stem: compact revoke file: keep corrupt lines: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("stem: compact revoke file: keep corrupt lines: %w", cerr)
		}
	}()
	w := bufio.NewWriter(out)
	fmt.Fprintf(w, "# stem: corrupt lines of %s, moved here by compaction at %s; each is <line number> TAB <line as found>\n",
		r.path, time.Now().UTC().Format(time.RFC3339))
	end := v.offset + v.tailLen
	lr := newLineReader(io.NewSectionReader(v.f, 0, end))
	moved := 0
	var offset int64
	for lineNo := 1; ; lineNo++ {
		line, n, _, err := lr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("stem: compact revoke file: read %s at line %d: %w", r.path, lineNo, err)
		}
		if _, _, _, perr := decodeLine(line, n); perr != nil {
			w.WriteString(strconv.Itoa(lineNo))
			w.WriteByte('\t')
			if line != nil {
				w.Write(line)
			} else if err := copyRange(w, v.f, offset, n); err != nil {
				// A line too long to hold: copy it from the file.
				return fmt.Errorf("stem: compact revoke file: copy line %d of %s: %w", lineNo, r.path, err)
			}
			w.WriteByte('\n')
			moved++
		}
		offset += n
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("stem: compact revoke file: write %s: %w", r.corruptPath, err)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("stem: compact revoke file: fsync %s: %w", r.corruptPath, err)
	}
	if err := syncDir(filepath.Dir(r.corruptPath)); err != nil {
		return err
	}
	r.log.Warn("stem: moved corrupt revoke records out of the revoke file", "path", r.path, "corrupt_path", r.corruptPath, "lines", moved)
	return nil
}

// copyRange copies the line of n bytes at offset in f to w, without its
// newline.
func copyRange(w io.Writer, f *os.File, offset, n int64) error {
	buf := make([]byte, 1)
	if _, err := f.ReadAt(buf, offset+n-1); err != nil {
		return err
	}
	if buf[0] == '\n' {
		n--
	}
	copied, err := io.Copy(w, io.NewSectionReader(f, offset, n))
	if err == nil && copied != n {
		err = errors.New("short copy")
	}
	return err
}
