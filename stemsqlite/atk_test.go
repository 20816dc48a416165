package stemsqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// A released delivery is no longer held (stemdriver.Broker contract): its
// old receipt must not ack, extend, retry, dead-letter or release the
// message, which stays ready for the next Claim.
func TestReleasedDeliveryIsNotHeld(t *testing.T) {
	ops := map[string]func(b *Broker, d stemdriver.Delivery) error{
		"Ack": func(b *Broker, d stemdriver.Delivery) error { return b.Ack(t.Context(), d) },
		"ExtendLease": func(b *Broker, d stemdriver.Delivery) error {
			return b.ExtendLease(t.Context(), d, time.Hour)
		},
		"Retry": func(b *Broker, d stemdriver.Delivery) error {
			next := *d.Envelope
			next.Attempt++
			return b.Retry(t.Context(), d, &next)
		},
		"DeadLetter": func(b *Broker, d stemdriver.Delivery) error { return b.DeadLetter(t.Context(), d, "late") },
		"Release":    func(b *Broker, d stemdriver.Delivery) error { return b.Release(t.Context(), d) },
	}
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			ctx := testCtx(t)
			u, _ := tempURL(t, "released.db")
			b := opened[*Broker](t)(OpenBroker(ctx, u, testOpts("rel")))
			if err := b.Publish(ctx, env("t1", "q")); err != nil {
				t.Fatal(err)
			}
			ds, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "w", Max: 1, Lease: time.Hour})
			if err != nil || len(ds) != 1 {
				t.Fatalf("Claim = %d deliveries, %v", len(ds), err)
			}
			if err := b.Release(ctx, ds[0]); err != nil {
				t.Fatalf("Release: %v", err)
			}
			if err := op(b, ds[0]); !errors.Is(err, stemdriver.ErrLeaseLost) {
				t.Errorf("%s of a released delivery = %v, want ErrLeaseLost", name, err)
			}
			if n, err := b.Depth(ctx, "q"); err != nil || n != 1 {
				t.Errorf("Depth after %s of a released delivery = %d, %v; want 1 (the message ready)", name, n, err)
			}
			again, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "w2", Max: 2, Lease: time.Hour})
			if err != nil || len(again) != 1 || again[0].Envelope.ID != "t1" || again[0].Envelope.Attempt != 0 {
				t.Fatalf("Claim after %s of a released delivery = %+v, %v; want t1 unchanged", name, again, err)
			}
		})
	}
}

// A database opened through a symlink in another directory (a state
// directory linked to a data disk) is watched where SQLite keeps its WAL
// file, beside the real file: otherwise a process that opened the link
// hears of other processes' writes only from the slow safety-net poll.
func TestWALNotifierThroughSymlink(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the WAL notifier is Linux's")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	real := filepath.Join(t.TempDir(), "real.db")
	link := filepath.Join(t.TempDir(), "link.db")
	a := openHandle(t, "sqlite://"+real, "sym")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	b := openHandle(t, "sqlite://"+link, "sym")
	if b.st.watch.wal == nil {
		t.Fatal("no WAL notifier for the handle opened through the link")
	}
	// Drain a token left by b's own open.
	select {
	case <-b.st.watch.wal.C():
	default:
	}
	if err := a.broker.Publish(ctx, env("t1", "q")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.st.watch.wal.C():
	case <-ctx.Done():
		t.Fatal("the WAL notifier of the handle opened through a symlink never heard of the other handle's write")
	}
}

// Final states are final against writers of other processes: two handles
// of one file race finals, starts and progress writes of the same tasks;
// once a reader sees a final state, it never changes.
func TestFinalStateFinalAcrossHandles(t *testing.T) {
	ctx := testCtx(t)
	u, _ := tempURL(t, "final.db")
	hs := []*handle{openHandle(t, u, "fin"), openHandle(t, u, "fin")}
	const tasks, rounds = 5, 20
	states := []stemtype.State{stemtype.StateStarted, stemtype.StateSucceeded, stemtype.StateRetry, stemtype.StateFailed, stemtype.StatePending, stemtype.StateCancelled}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			h := hs[w%2]
			for r := range rounds {
				for k := range tasks {
					id := fmt.Sprintf("t%d", k)
					st := states[(w+r+k)%len(states)]
					res := &stemtype.TaskResult{ID: id, State: st, WorkerID: fmt.Sprintf("w%d", w)}
					var err error
					if r%3 == 0 {
						_, err = h.results.PutIfState(ctx, res, states...)
					} else {
						// A batch with the id twice: the later applies after.
						err = h.results.Put(ctx, res, &stemtype.TaskResult{ID: id, State: stemtype.StateStarted})
					}
					if err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	first := map[string]stemtype.TaskResult{}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	check := func() {
		for k := range tasks {
			id := fmt.Sprintf("t%d", k)
			for _, h := range hs {
				got, err := h.results.Get(ctx, id)
				if errors.Is(err, stemdriver.ErrNotFound) {
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if f, ok := first[id]; ok {
					if got.State != f.State || got.WorkerID != f.WorkerID {
						t.Fatalf("task %s: final %s by %s replaced by %s by %s", id, f.State, f.WorkerID, got.State, got.WorkerID)
					}
				} else if got.State.Final() {
					first[id] = *got
				}
			}
		}
	}
	for {
		select {
		case <-done:
			check()
			if len(first) != tasks {
				t.Fatalf("%d of %d tasks reached a final state", len(first), tasks)
			}
			return
		default:
			check()
		}
	}
}

// A database file deleted (or replaced) while a process has it open must
// not split the deployment silently: the process would go on with the old,
// unlinked file while new processes create and use a new one. Operations
// of the old handle fail with an error naming the file.
func TestDeletedFileIsAnError(t *testing.T) {
	for _, how := range []string{"deleted", "replaced"} {
		t.Run(how, func(t *testing.T) {
			ctx := testCtx(t)
			u, p := tempURL(t, "del.db")
			a := openHandle(t, u, "d")
			if err := a.broker.Publish(ctx, env("before", "q")); err != nil {
				t.Fatal(err)
			}
			for _, suffix := range []string{"", "-wal", "-shm"} {
				if err := os.Remove(p + suffix); err != nil && !os.IsNotExist(err) {
					t.Fatal(err)
				}
			}
			if how == "replaced" {
				// Another process creates the file anew.
				b := openHandle(t, u, "d")
				if err := b.broker.Publish(ctx, env("after", "q")); err != nil {
					t.Fatal(err)
				}
			}
			ds, err := a.broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Max: 1, Lease: time.Minute})
			if err == nil {
				t.Errorf("Claim on the %s file's old handle = %d deliveries, no error", how, len(ds))
			} else if !strings.Contains(err.Error(), p) {
				t.Errorf("Claim error %q does not name the file", err)
			}
			if err := a.broker.Publish(ctx, env("lost", "q")); err == nil {
				t.Errorf("Publish on the %s file's old handle succeeded: the message is lost to every new process", how)
			}
			if _, err := a.results.Get(ctx, "x"); err == nil || errors.Is(err, stemdriver.ErrNotFound) {
				t.Errorf("Get on the %s file's old handle = %v, want an error about the file", how, err)
			}
		})
	}
}

// One handle per file per process, whatever path names the file: a
// symlink to it (or to its directory) shares the handle opened by the
// real path, so that the process's writers queue in Go on one connection.
func TestOneHandleThroughSymlinks(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	real := filepath.Join(dir, "real.db")
	links := t.TempDir()
	fileLink, dirLink := filepath.Join(links, "file.db"), filepath.Join(links, "dir")
	if err := os.Symlink(real, fileLink); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dir, dirLink); err != nil {
		t.Fatal(err)
	}
	b := opened[*Broker](t)(OpenBroker(ctx, "sqlite://"+real, testOpts("a")))
	for _, p := range []string{fileLink, filepath.Join(dirLink, "real.db")} {
		r := opened[*Results](t)(OpenResults(ctx, "sqlite://"+p, testOpts("a")))
		if r.st != b.st {
			t.Errorf("%s: a second handle of the file opened as %s", p, real)
		}
	}
}

// Control messages and replies are opaque bytes, the empty (nil) message
// included: it is delivered as an empty message, not refused.
func TestEmptyControlMessageAndReply(t *testing.T) {
	ctx := testCtx(t)
	u, _ := tempURL(t, "empty.db")
	c := opened[*Control](t)(OpenControl(ctx, u, testOpts("e")))
	sub, err := c.Subscribe(ctx, "w")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := c.Publish(ctx, nil, nil); err != nil {
		t.Fatalf("Publish of a nil message: %v", err)
	}
	select {
	case m := <-sub.C():
		if len(m) != 0 {
			t.Fatalf("got %q, want an empty message", m)
		}
	case <-ctx.Done():
		t.Fatal("the empty message never arrived")
	}
	if err := c.Reply(ctx, "r", nil); err != nil {
		t.Fatalf("Reply of a nil message: %v", err)
	}
	n := -1
	if err := c.Replies(ctx, "r", func(m []byte) bool { n = len(m); return false }); err != nil || n != 0 {
		t.Fatalf("Replies = %v, message of %d bytes; want one empty reply", err, n)
	}
}

// One record that does not decode (written by a foreign tool or a broken
// disk) loses nothing else: List skips it with a warning, as the Redis and
// Postgres stores do, so a worker still loads every other revoke.
func TestUndecodableRevokeRecordIsSkipped(t *testing.T) {
	u, path := tempURL(t, "revokes.db")
	ctx := context.Background()
	var logs testutil.SyncBuffer
	s, err := OpenRevokes(ctx, u, testOptsWith("ns", slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	good := stemtype.RevokeRecord{Namespace: "ns", TaskID: "good", Version: 1, IssuedAt: time.Now()}
	bad := stemtype.RevokeRecord{Namespace: "ns", TaskID: "bad", Version: 1, IssuedAt: time.Now()}
	if _, err := s.Upsert(ctx, good, bad); err != nil {
		t.Fatal(err)
	}
	// A foreign writer, waiting for the store's own writes as SQLite's
	// busy timeout lets it.
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE stem_revokes SET body = x'7b6e6f74206a736f6e' WHERE task_id = 'bad'`); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	recs, err := s.List(ctx, "ns")
	if err != nil || len(recs) != 1 || recs[0].TaskID != "good" {
		t.Fatalf("List = %+v, %v; want the good record alone", recs, err)
	}
	if !strings.Contains(logs.String(), "bad") {
		t.Errorf("no warning names the skipped record:\n%s", logs.String())
	}
}
