package stemfile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// maxLine is the longest line, newline excluded, that is read as a record.
// Longer lines are corrupt; Upsert refuses records that would make one.
const maxLine = 1 << 20

// compactSlack is how many lines beyond twice the live records an Upsert
// tolerates before it compacts the file.
const compactSlack = 1000

// fileMode is the mode of a data file created by the first write (before the
// umask); a compaction keeps the mode of the file it replaces.
const fileMode = 0o644

// Revokes is a stemdriver.RevokeStore kept in one newline-delimited JSON
// file. It is safe for concurrent use by many goroutines, and by many
// handles and processes on one host sharing the file; see the package
// documentation for the format, locking and limits.
type Revokes struct {
	path        string
	lockPath    string
	corruptPath string
	log         *slog.Logger

	// mu serialises this handle's operations: the flock below excludes
	// other handles, but not two goroutines sharing this handle's lock file
	// descriptor.
	mu     sync.Mutex
	closed bool
	lock   *os.File
	// data is the data file, flocked like lock while an operation runs
	// (nil between operations, and when there was no file to lock).
	data *os.File
	view view
}

// view is a handle's index of the data file and how much of it was read.
type view struct {
	// f is the data file as last read, nil when there was none. It is held
	// open so that its inode cannot be reused by another file while the
	// view compares identities.
	f  *os.File
	fi os.FileInfo
	// offset is the end of the last complete line read.
	offset int64
	// lines counts the complete lines before offset, blank and corrupt
	// ones included; corrupt counts the corrupt ones.
	lines   int
	corrupt int
	// tailLen is the length of the unterminated last line after offset, if
	// any; tailCorrupt reports whether it failed to parse.
	tailLen     int64
	tailCorrupt bool
	// warnedTail is the offset of the unterminated line already reported,
	// so it is not reported again once a writer completes it; -1 if none.
	warnedTail int64
	// index holds the winning record of each task, by namespace then task
	// id; live counts them.
	index map[string]map[string]stemtype.RevokeRecord
	live  int
	// tombs holds the tombstones of pruned records, by namespace then
	// task id; ntombs counts them.
	tombs  map[string]map[string]tombstone
	ntombs int
}

var _ stemdriver.RevokeStore = (*Revokes)(nil)

// OpenRevokes opens the revoke store kept in the file at path, which need
// not exist yet: a missing file is an empty store, created by the first
// write. The directory holding it must exist. OpenRevokes creates the lock
// file path+".lock" beside it (or opens it read-only where it exists but is
// not writable, which still allows reading), and checks that an existing data
// file can be read; it reads no records, so it never blocks on another
// process. The store serves every namespace: opts.Namespace is not used, and
// opts.Logger receives the reports of corrupt lines.
func OpenRevokes(path string, opts stemdriver.Options) (*Revokes, error) {
	if !lockSupported {
		return nil, fmt.Errorf("stem: revoke file %s: the file revoke store needs flock, which %s lacks", path, runtime.GOOS)
	}
	if path == "" {
		return nil, errors.New("stem: revoke file path is empty")
	}
	path = resolvePath(path)
	dir := filepath.Dir(path)
	switch st, err := os.Stat(dir); {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("stem: revoke file %s: directory %s does not exist (stem does not create it)", path, dir)
	case err != nil:
		return nil, fmt.Errorf("stem: revoke file %s: %w", path, err)
	case !st.IsDir():
		return nil, fmt.Errorf("stem: revoke file %s: %s is not a directory", path, dir)
	}
	switch st, err := os.Stat(path); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("stem: revoke file %s: %w", path, err)
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("stem: revoke file %s is not a regular file (mode %s)", path, st.Mode())
	default:
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("stem: revoke file %s cannot be read: %w", path, err)
		}
		f.Close()
	}
	lockPath := path + ".lock"
	lock, err := openLock(lockPath)
	if err != nil {
		return nil, fmt.Errorf("stem: revoke file %s: open lock file: %w", path, err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	return &Revokes{
		path:        path,
		lockPath:    lockPath,
		corruptPath: path + ".corrupt",
		log:         logger,
		lock:        lock,
		view:        view{warnedTail: -1},
	}, nil
}

// maxLinks is how many symlinks resolvePath follows before it gives up.
const maxLinks = 255

// resolvePath resolves the symlinks of path, so that every user of one file
// shares its lock and compaction replaces the file, not a link to it. A
// path that is a symlink to a file not created yet (a dangling link, which
// filepath.EvalSymlinks refuses) resolves to the link's target, the file
// that the first write creates through it, as it does once that file
// exists. A path that cannot be resolved is returned with its directory
// resolved, or unchanged; opening it then reports what is wrong.
func resolvePath(path string) string {
	for range maxLinks {
		if resolved, err := filepath.EvalSymlinks(path); err == nil {
			return resolved
		}
		// Resolve the link's directory first, so that a relative target
		// (with "..") is joined to a path free of links.
		if d, err := filepath.EvalSymlinks(filepath.Dir(path)); err == nil {
			path = filepath.Join(d, filepath.Base(path))
		}
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			break
		}
		target, err := os.Readlink(path)
		if err != nil {
			break
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(path), target)
		}
		path = target
	}
	if d, err := filepath.EvalSymlinks(filepath.Dir(path)); err == nil {
		return filepath.Join(d, filepath.Base(path))
	}
	return path
}

// Path returns the path of the data file.
func (r *Revokes) Path() string { return r.path }

// Upsert appends every record, each with version max(stored+1, proposed)
// for its namespace and task, fsyncs the file, and returns the records in
// input order with the versions they were stored with. All of it happens
// under the exclusive flock, so a revoke issued after another one of the
// same task returned always wins, whichever handle or process wrote it.
// Records of one call are applied in order, so a later one supersedes an
// earlier one of the same task. An invalid record, or a task already stored
// at the highest int64 version, fails the whole call before anything is
// written.
func (r *Revokes) Upsert(ctx context.Context, recs ...stemtype.RevokeRecord) ([]stemtype.RevokeRecord, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Encode first, outside the lock: bad input fails before any write.
	lines := make([][]byte, len(recs))
	stored := make([]stemtype.RevokeRecord, len(recs))
	for i, rec := range recs {
		if err := rec.Validate(); err != nil {
			return nil, fmt.Errorf("%w (record %d of %d; nothing written to %s)", err, i+1, len(recs), r.path)
		}
		rec.IssuedAt = rec.IssuedAt.UTC()
		rec.ExpiresAt = rec.ExpiresAt.UTC()
		b, err := json.Marshal(rec)
		if err != nil {
			return nil, fmt.Errorf("stem: encode revoke record for task %q: %w", rec.TaskID, err)
		}
		if len(b) > maxLine {
			return nil, fmt.Errorf("stem: revoke record for task %q encodes to %d bytes, more than the %d a line of %s may hold (nothing written)", rec.TaskID, len(b), maxLine, r.path)
		}
		lines[i], stored[i] = b, rec
	}
	if len(recs) == 0 {
		return []stemtype.RevokeRecord{}, nil
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, stemdriver.ErrClosed
	}
	if err := r.acquire(ctx, lockExclusive, true); err != nil {
		return nil, err
	}
	defer r.unlock()
	if err := r.refresh(); err != nil {
		return nil, err
	}

	v := &r.view
	var buf bytes.Buffer
	if v.tailLen > 0 {
		// Start after the unterminated line a crashed writer left.
		buf.WriteByte('\n')
	}
	// Assign every version before indexing any record, so that a call
	// that fails leaves the index as the file is.
	type key struct{ ns, task string }
	var within map[key]int64 // versions assigned earlier in this call
	ignored := 0
	for i := range stored {
		rec := &stored[i]
		cur, ok := within[key{rec.Namespace, rec.TaskID}]
		if !ok {
			if held, found := v.index[rec.Namespace][rec.TaskID]; found {
				cur, ok = held.Version, true
			}
		}
		if !ok {
			if tomb, dead := v.tombs[rec.Namespace][rec.TaskID]; dead && rec.Version <= tomb.version {
				// A late write of a pruned revoke: ignored.
				rec.Version, lines[i] = 0, nil
				ignored++
				continue
			}
		}
		if ok && cur >= rec.Version {
			if cur == math.MaxInt64 {
				return nil, fmt.Errorf("stem: revoke file %s: task %q in namespace %q is stored at the highest version, %d (nothing written)", r.path, rec.TaskID, rec.Namespace, cur)
			}
			rec.Version = cur + 1
			b, err := json.Marshal(rec)
			if err != nil {
				return nil, fmt.Errorf("stem: encode revoke record for task %q: %w", rec.TaskID, err)
			}
			lines[i] = b // a longer version adds a digit or two: no line nears maxLine
		}
		if len(stored) > 1 {
			if within == nil {
				within = make(map[key]int64, len(stored))
			}
			within[key{rec.Namespace, rec.TaskID}] = rec.Version
		}
	}
	out := make([]stemtype.RevokeRecord, len(recs))
	for i, rec := range stored {
		out[i] = recs[i]
		out[i].Version = rec.Version
		if rec.Version == 0 {
			continue
		}
		v.put(rec) // always wins: its version is above the held one
		buf.Write(lines[i])
		buf.WriteByte('\n')
	}
	appended := len(stored) - ignored
	if appended == 0 {
		return out, nil
	}
	if err := r.append(buf.Bytes()); err != nil {
		// The index already holds records that may not be on disk: drop
		// it, so the next operation reads the file afresh.
		r.invalidate()
		return nil, err
	}
	if v.tailLen > 0 {
		v.lines++
		if v.tailCorrupt {
			v.corrupt++
		}
	}
	v.offset += v.tailLen + int64(buf.Len())
	v.tailLen, v.tailCorrupt = 0, false
	v.lines += appended

	if v.lines > 2*(v.live+v.ntombs)+compactSlack {
		// The records are durable already: a failed compaction is worth a
		// warning, not an error that would make the caller doubt them.
		if _, err := r.compact(nil); err != nil {
			r.log.Warn("stem: revoke file compaction failed", "path", r.path, "error", err)
		}
	}
	return out, nil
}

// List returns every record stored for namespace, expired ones included
// until pruned, in no particular order.
func (r *Revokes) List(ctx context.Context, namespace string) ([]stemtype.RevokeRecord, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, stemdriver.ErrClosed
	}
	if err := r.acquire(ctx, lockShared, false); err != nil {
		return nil, err
	}
	defer r.unlock()
	if err := r.refresh(); err != nil {
		return nil, err
	}
	ns := r.view.index[namespace]
	out := make([]stemtype.RevokeRecord, 0, len(ns))
	for _, rec := range ns {
		out = append(out, rec)
	}
	return out, nil
}

// Prune deletes the records of namespace that expired at or before now and
// returns how many it deleted, leaving a tombstone line of each (see
// stemdriver.RevokeStore), and deletes the namespace's tombstones older
// than stemdriver.RevokeTombstoneRetention. It compacts the file when it deletes any
// record or the file holds superseded, blank or corrupt lines (corrupt lines
// go to PATH.corrupt); otherwise it leaves the file untouched.
func (r *Revokes) Prune(ctx context.Context, namespace string, now time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, stemdriver.ErrClosed
	}
	if err := r.acquire(ctx, lockExclusive, false); err != nil {
		return 0, err
	}
	defer r.unlock()
	if r.data == nil {
		// There was no data file when the lock was taken: nothing to
		// prune, and no lock on a file created since.
		return 0, nil
	}
	if err := r.refresh(); err != nil {
		return 0, err
	}
	v := &r.view
	expired := 0
	for _, rec := range v.index[namespace] {
		if rec.Expired(now) {
			expired++
		}
	}
	for _, tomb := range v.tombs[namespace] {
		if !now.Before(tomb.until) {
			expired++
		}
	}
	if v.f == nil || expired == 0 && v.lines == v.live+v.ntombs && v.tailLen == 0 {
		return 0, nil
	}
	n, err := r.compact(&pruning{namespace: namespace, now: now})
	if err != nil && expired == 0 {
		// Only tidying was due (superseded lines): a reader that cannot
		// write the directory must not fail for it.
		r.log.Warn("stem: revoke file not compacted", "path", r.path, "err", err)
		return 0, nil
	}
	return n, err
}

// Close releases the handle's files. Later calls return
// stemdriver.ErrClosed; Close itself may be called again.
func (r *Revokes) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	var errs []error
	if r.view.f != nil {
		errs = append(errs, r.view.f.Close())
	}
	r.view = view{warnedTail: -1}
	errs = append(errs, r.lock.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stem: close revoke file %s: %w", r.path, err)
	}
	return nil
}

// acquire takes the flock on the lock file, shared or exclusive, then the
// same flock on the data file itself, creating the data file first when
// create is set. A lock on a lock file that was since removed or replaced (by
// hand) excludes nobody, so acquire then reopens the lock file at its path
// and locks that one. The lock on the data file keeps writers apart even
// when a tmp cleaner deletes the lock file while it is held (a writer that
// starts afterwards creates and locks a new lock file, then waits here); a
// lock on a data file that a compaction has since replaced is dropped and
// the new file locked instead. Without create, a missing data file is not
// locked and r.data stays nil.
func (r *Revokes) acquire(ctx context.Context, how int, create bool) error {
	for {
		if err := flock(ctx, r.lock, how); err != nil {
			return err
		}
		held, err1 := r.lock.Stat()
		cur, err2 := os.Stat(r.lockPath)
		if err1 == nil && err2 == nil && os.SameFile(held, cur) {
			break
		}
		r.unlock()
		if err := errors.Join(err1, err2); err != nil && !errors.Is(err2, fs.ErrNotExist) {
			return fmt.Errorf("stem: revoke file %s: lock file: %w", r.path, err)
		}
		lock, err := openLock(r.lockPath)
		if err != nil {
			return fmt.Errorf("stem: revoke file %s: reopen lock file: %w", r.path, err)
		}
		r.log.Warn("stem: revoke lock file was removed or replaced; using the new one", "path", r.lockPath)
		r.lock.Close()
		r.lock = lock
	}
	if err := r.lockData(ctx, how, create); err != nil {
		r.unlock()
		return err
	}
	return nil
}

// lockData takes the flock on the data file at r.path, as acquire
// describes; the caller holds the flock on the lock file.
func (r *Revokes) lockData(ctx context.Context, how int, create bool) error {
	for {
		created := false
		f, err := os.Open(r.path)
		if errors.Is(err, fs.ErrNotExist) {
			if !create {
				return nil
			}
			f, err = os.OpenFile(r.path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, fileMode)
			created = err == nil
			if errors.Is(err, fs.ErrExist) {
				continue // created by another writer meanwhile
			}
		}
		if err != nil {
			return fmt.Errorf("stem: revoke file %s: %w", r.path, err)
		}
		if created {
			if err := syncDir(filepath.Dir(r.path)); err != nil {
				f.Close()
				return err
			}
		}
		if err := flock(ctx, f, how); err != nil {
			f.Close()
			return err
		}
		held, err1 := f.Stat()
		cur, err2 := os.Stat(r.path)
		if err1 == nil && err2 == nil && os.SameFile(held, cur) {
			r.data = f
			return nil
		}
		f.Close() // releases the lock on a file that is no longer at path
		if err1 != nil {
			return fmt.Errorf("stem: revoke file %s: %w", r.path, err1)
		}
		if err2 != nil && !errors.Is(err2, fs.ErrNotExist) {
			return fmt.Errorf("stem: revoke file %s: %w", r.path, err2)
		}
	}
}

// openLock opens the lock file at path, creating it if needed, or read-only
// where it exists but may not be written (flock works on either).
func openLock(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, fileMode)
	if errors.Is(err, fs.ErrPermission) {
		if ro, rerr := os.Open(path); rerr == nil {
			return ro, nil
		}
	}
	return f, err
}

// unlock releases the flocks, logging a failure: the operation it ends has
// already succeeded or failed on its own terms, and closing the lock file
// would release the lock anyway.
func (r *Revokes) unlock() {
	if r.data != nil {
		r.data.Close() // releases its flock
		r.data = nil
	}
	if err := funlock(r.lock); err != nil {
		r.log.Error("stem: cannot release revoke file lock", "path", r.lockPath, "error", err)
	}
}

// invalidate forgets the view, so that the next refresh reads the whole
// file again.
func (r *Revokes) invalidate() {
	if r.view.f != nil {
		r.view.f.Close()
	}
	r.view = view{warnedTail: -1}
}

// append writes b at the end of the data file, creating it if needed, and
// fsyncs it (and the directory, when it created the file). The caller holds
// the exclusive lock and has just refreshed the view.
func (r *Revokes) append(b []byte) error {
	created := r.view.f == nil
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, fileMode)
	if err != nil {
		return fmt.Errorf("stem: append to revoke file: %w", err)
	}
	if !created {
		fi, err := f.Stat()
		if err == nil && !os.SameFile(fi, r.view.fi) {
			err = errors.New("the file was replaced without holding the lock")
		}
		if err != nil {
			f.Close()
			return fmt.Errorf("stem: append to revoke file %s: %w", r.path, err)
		}
	}
	// A failed write or fsync must leave no part of b behind: the caller
	// reports failure and publishes nothing, so no record may apply.
	before, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return fmt.Errorf("stem: append to revoke file %s: %w", r.path, err)
	}
	undo := func(cause error) error {
		if terr := f.Truncate(before); terr != nil {
			f.Close()
			return fmt.Errorf("%w (and undoing the partial write failed, some records may be stored: %v)", cause, terr)
		}
		_ = f.Sync()
		f.Close()
		return cause
	}
	if _, err := f.Write(b); err != nil {
		return undo(fmt.Errorf("stem: append to revoke file: %w", err))
	}
	if err := f.Sync(); err != nil {
		return undo(fmt.Errorf("stem: fsync revoke file: %w", err))
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("stem: close revoke file: %w", err)
	}
	if !created {
		return nil
	}
	if err := syncDir(filepath.Dir(r.path)); err != nil {
		return err
	}
	rf, err := os.Open(r.path)
	if err != nil {
		return fmt.Errorf("stem: reopen revoke file: %w", err)
	}
	fi, err := rf.Stat()
	if err != nil {
		rf.Close()
		return fmt.Errorf("stem: revoke file: %w", err)
	}
	r.view.f, r.view.fi = rf, fi
	return nil
}

// syncDir fsyncs a directory, making a file created or renamed in it
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("stem: fsync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("stem: fsync directory %s: %w", dir, err)
	}
	return nil
}
