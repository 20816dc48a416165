package stemfile

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
)

// TestHelperPartialWrite is run in a child process by
// TestFailedUpsertLeavesNothing: it upserts under a file size limit that
// stops the write part way. It lowers only the soft limit, which any user
// may raise again up to the hard one, and restores it before it returns:
// the test binary writes its coverage data at exit under -cover, and a
// limit left in place would make that fail.
func TestHelperPartialWrite(t *testing.T) {
	path := os.Getenv("STEMFILE_PARTIAL_PATH")
	if path == "" {
		t.Skip("helper process")
	}
	limit, err := strconv.ParseUint(os.Getenv("STEMFILE_PARTIAL_LIMIT"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	rs, _ := open(t, path)
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	if old.Max < limit {
		t.Fatalf("the hard file size limit, %d, is below the %d bytes the test needs", old.Max, limit)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: limit, Max: old.Max}); err != nil {
		t.Fatal(err)
	}
	_, upsertErr := rs.Upsert(t.Context(), rec("ns", "b", 1), rec("ns", "c", 1))
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatalf("restore the file size limit: %v", err)
	}
	if upsertErr == nil {
		t.Fatal("Upsert past the file size limit succeeded")
	}
}

// An Upsert whose write fails part way (disk full, quota, size limit)
// leaves none of its records: the caller was told it failed, so no reader
// may apply them.
func TestFailedUpsertLeavesNothing(t *testing.T) {
	path := tempPath(t)
	rs, _ := open(t, path)
	upsert(t, rs, rec("ns", "a", 1))
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// Room for all of line b and a few bytes of line c.
	limit := 2*st.Size() + 10
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestHelperPartialWrite$", "-test.count=1")
	cmd.Env = append(os.Environ(), "STEMFILE_PARTIAL_PATH="+path, "STEMFILE_PARTIAL_LIMIT="+strconv.FormatInt(limit, 10))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	want(t, "records after the failed Upsert", list(t, rs, "ns"), "a@1")
	if st2, _ := os.Stat(path); st2.Size() != st.Size() {
		t.Fatalf("file grew from %d to %d bytes after a failed Upsert", st.Size(), st2.Size())
	}
}

// A store opened through a symlink shares the file, its lock and its
// compactions with one opened by the real path.
func TestSymlinkedPathSharesTheFile(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real.ndjson")
	link := filepath.Join(dir, "link.ndjson")
	viaReal, _ := open(t, real)
	upsert(t, viaReal, rec("ns", "a", 1), rec("ns", "a", 2)) // a superseded line to compact
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	viaLink, _ := open(t, link)
	if _, err := viaLink.Prune(t.Context(), "ns", time.Now()); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("compaction through the link replaced the link: %v %v", fi.Mode(), err)
	}
	upsert(t, viaLink, rec("ns", "b", 1))
	want(t, "records seen through the real path", list(t, viaReal, "ns"), "a@2", "b@1")
	if _, err := os.Stat(link + ".lock"); err == nil {
		t.Fatal("a second lock file was made beside the link")
	}
}

// Temporary files of a compaction killed part way are removed by the next
// compaction.
func TestCompactionRemovesOrphanTemporaryFiles(t *testing.T) {
	path := tempPath(t)
	rs, _ := open(t, path)
	upsert(t, rs, rec("ns", "a", 1), rec("ns", "a", 2))
	orphan := path + ".compact-123456"
	if err := os.WriteFile(orphan, []byte("left by a killed process\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Prune(t.Context(), "ns", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatalf("orphan %s still there: %v", orphan, err)
	}
	want(t, "records", list(t, rs, "ns"), "a@2")
}

// Compaction keeps the data file's owner, so the user that could append
// before (a worker's service user) still can when another user (the CLI
// under sudo) compacted it. Root gives the file to nobody; any other user
// gives it the group that differs most from what a new file of its would
// get (a supplementary group, when it has one), the furthest it may go.
// The mode is kept as well.
func TestCompactionKeepsTheOwner(t *testing.T) {
	path := tempPath(t)
	rs, _ := open(t, path)
	upsert(t, rs, rec("ns", "a", 1), rec("ns", "a", 2))
	uid, gid := os.Geteuid(), os.Getegid()
	if uid == 0 {
		const nobody = 65534
		uid, gid = nobody, nobody
	} else if groups, err := os.Getgroups(); err == nil {
		for _, g := range groups {
			if g != gid {
				gid = g
				break
			}
		}
	}
	t.Logf("data file owner before compaction: %d:%d", uid, gid)
	if err := os.Chown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Prune(t.Context(), "ns", time.Now()); err != nil {
		t.Fatal(err)
	}
	if lines := fileLines(t, path); len(lines) != 1 {
		t.Fatalf("file holds %d lines after Prune, want 1 (compacted)", len(lines))
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid || int(st.Gid) != gid {
		t.Fatalf("owner after compaction %d:%d, want %d:%d", st.Uid, st.Gid, uid, gid)
	}
	if fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode after compaction %v, want 0640", fi.Mode().Perm())
	}
	want(t, "records", list(t, rs, "ns"), "a@2")
}

// holdExclusive takes rs's exclusive lock as an Upsert does and keeps it
// until the test releases it, as a writer of another process would hold it
// mid-append.
func holdExclusive(t *testing.T, rs *Revokes) (release func()) {
	t.Helper()
	rs.mu.Lock()
	if err := rs.acquire(t.Context(), lockExclusive, true); err != nil {
		rs.mu.Unlock()
		t.Fatal(err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			rs.unlock()
			rs.mu.Unlock()
		})
	}
	t.Cleanup(release)
	return release
}

// A tmp cleaner that deletes PATH.lock while a writer holds it must not let
// a writer that starts afterwards (and so creates a new lock file) in
// before the first one is done.
func TestLockFileDeletedWhileHeldStillExcludes(t *testing.T) {
	path := tempPath(t)
	first, _ := open(t, path)
	upsert(t, first, rec("stem", "a", 1))
	release := holdExclusive(t, first)
	if err := os.Remove(path + ".lock"); err != nil {
		t.Fatal(err)
	}
	second, _ := open(t, path) // opened after the cleaner ran: a new lock file
	// 200 ms is only how long the test waits for a wrong implementation to
	// let the second writer in; a right one never does while the first
	// holds the lock.
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if _, err := second.Upsert(ctx, rec("stem", "b", 1)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Upsert while another writer holds the deleted lock file: error = %v, want a deadline error (the writer got in)", err)
	}
	release()
	upsert(t, second, rec("stem", "b", 1))
	want(t, "List after the first writer let go", list(t, second, "stem"), "a@1", "b@1")
}

// Writers on several handles bump one task while a cleaner keeps deleting
// the lock file and a pruner keeps compacting the data file: with mutual
// exclusion every Upsert is assigned a version no other got (each is
// max(held+1, proposed) under the lock), so 4 writers x 50 upserts yield
// 200 distinct versions and the file ends holding the highest.
func TestWritersNeverInterleaveWhileLockFileIsDeleted(t *testing.T) {
	path := tempPath(t)
	const writers, each = 4, 50
	handles := make([]*Revokes, writers+1)
	for i := range handles {
		handles[i], _ = open(t, path)
	}
	var (
		mu       sync.Mutex
		versions = map[int64]int{}
		wg       sync.WaitGroup
		errs     = make(chan error, writers+2)
	)
	done := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			for range each {
				out, err := handles[w].Upsert(t.Context(), rec("stem", "t", 1))
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				versions[out[0].Version]++
				mu.Unlock()
			}
		})
	}
	var bg sync.WaitGroup
	bg.Go(func() { // the tmp cleaner
		for {
			select {
			case <-done:
				return
			default:
			}
			if err := os.Remove(path + ".lock"); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs <- err
				return
			}
			runtime.Gosched()
		}
	})
	bg.Go(func() { // compactions replace the data file
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, err := handles[writers].Prune(t.Context(), "stem", t0); err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Wait()
	close(done)
	bg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var dup []int64
	var highest int64
	for v, n := range versions {
		if n > 1 {
			dup = append(dup, v)
		}
		highest = max(highest, v)
	}
	if len(versions) != writers*each || len(dup) > 0 {
		t.Fatalf("%d distinct versions of %d upserts; versions assigned twice (two writers inside at once): %v", len(versions), writers*each, dup)
	}
	fresh, _ := open(t, path)
	want(t, "List after the writers", list(t, fresh, "stem"), fmt.Sprintf("t@%d", highest))
}

// TestHelperCompactKill is run in a child process by
// TestKilledDuringCompactionLosesNothing: it upserts records and compacts
// the file in a loop until it is killed, printing "ack ID" on stdout only
// once the Upsert of ID returned.
func TestHelperCompactKill(t *testing.T) {
	path := os.Getenv("STEMFILE_KILL_PATH")
	if path == "" {
		t.Skip("helper process")
	}
	round := os.Getenv("STEMFILE_KILL_ROUND")
	rs, err := OpenRevokes(path, stemdriver.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("ready")
	// The parent kills this process within a few milliseconds; the cap
	// only ends a child whose parent is gone.
	deadline := time.Now().Add(20 * time.Second)
	now := t0.Add(time.Hour)
	for i := 0; time.Now().Before(deadline); i++ {
		id := fmt.Sprintf("r%s-%d", round, i)
		if _, err := rs.Upsert(context.Background(), rec("ns", id, 1)); err != nil {
			t.Fatal(err)
		}
		fmt.Println("ack " + id)
		// An expired record, written twice: the second line supersedes
		// the first, and the Prune below drops both in a compaction,
		// leaving a tombstone. Its version, the clock's, is above that of
		// any earlier round's tombstone, so the write is not ignored.
		junk := expiring(rec("ns", "junk", time.Now().UnixMicro()), t0)
		if _, err := rs.Upsert(context.Background(), junk, junk); err != nil {
			t.Fatal(err)
		}
		if _, err := rs.Prune(context.Background(), "ns", now); err != nil {
			t.Fatal(err)
		}
	}
}

// A process killed (SIGKILL) at a random moment while it appends to and
// compacts the revoke file leaves a file that loads and holds every record
// whose Upsert returned: 100 rounds on one file, 100 of 100 must pass.
// STEMFILE_KILL_SEED replays a run.
func TestKilledDuringCompactionLosesNothing(t *testing.T) {
	seed := time.Now().UnixNano()
	if s := os.Getenv("STEMFILE_KILL_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseInt(s, 10, 64); err != nil {
			t.Fatalf("STEMFILE_KILL_SEED: %v", err)
		}
	}
	t.Logf("seed %d (set STEMFILE_KILL_SEED to replay)", seed)
	rnd := rand.New(rand.NewPCG(uint64(seed), 0))
	path := tempPath(t)
	const rounds = 100
	acked := map[string]bool{}
	passed, midCompaction := 0, 0
	for round := range rounds {
		delay := time.Duration(rnd.Int64N(int64(40 * time.Millisecond)))
		cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestHelperCompactKill$", "-test.count=1")
		cmd.Env = append(os.Environ(), "STEMFILE_KILL_PATH="+path, "STEMFILE_KILL_ROUND="+strconv.Itoa(round))
		var stderr strings.Builder
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		if !sc.Scan() || sc.Text() != "ready" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("round %d: helper did not start: %q %v\n%s", round, sc.Text(), sc.Err(), stderr.String())
		}
		// The delay is counted from the child's "ready"; it is the fault's
		// random moment, not a synchronisation.
		time.Sleep(delay)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("round %d: kill: %v", round, err)
		}
		n := 0
		for sc.Scan() {
			if id, ok := strings.CutPrefix(sc.Text(), "ack "); ok {
				acked[id] = true
				n++
			}
		}
		err = cmd.Wait()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: helper ended with %v before it was killed, want death by SIGKILL\n%s", round, err, stderr.String())
		}
		if orphans, _ := filepath.Glob(path + ".compact-*"); len(orphans) > 0 {
			midCompaction++
		}
		rs, err := OpenRevokes(path, stemdriver.Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatalf("round %d (killed %v after ready, %d acks): open: %v", round, delay, n, err)
		}
		recs, err := rs.List(t.Context(), "ns")
		rs.Close()
		if err != nil {
			t.Fatalf("round %d (killed %v after ready, %d acks): the file does not load: %v", round, delay, n, err)
		}
		have := map[string]bool{}
		for _, r := range recs {
			have[r.TaskID] = true
		}
		var lost []string
		for id := range acked {
			if !have[id] {
				lost = append(lost, id)
			}
		}
		if len(lost) > 0 {
			slices.Sort(lost)
			t.Errorf("round %d (killed %v after ready, %d acks): %d acknowledged records lost: %v", round, delay, n, len(lost), lost)
			continue
		}
		passed++
	}
	t.Logf("%d of %d rounds: file loaded with all %d acknowledged records; %d kills left a compaction's temporary file", passed, rounds, len(acked), midCompaction)
	if passed != rounds {
		t.Fatalf("%d of %d rounds passed, want %d", passed, rounds, rounds)
	}
	if len(acked) == 0 {
		t.Fatal("no Upsert was acknowledged in any round: the kills came too early to test anything")
	}
}
