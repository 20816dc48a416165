package stemsqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// handle is a private handle of a file with the roles opened on it: what
// another process opening the file would have.
type handle struct {
	st      *store
	broker  *Broker
	results *Results
	control *Control
}

// openHandle opens a private handle of the file of u (bypassing the
// process's shared one) and the roles of ns on it, all closed when t ends.
func openHandle(t testing.TB, u, ns string) *handle {
	t.Helper()
	return openHandleWith(t, u, ns, false)
}

// openHandleWith is openHandle with the change watcher polling only, as on
// a platform without a WAL notifier, when pollOnly is set.
func openHandleWith(t testing.TB, u, ns string, pollOnly bool) *handle {
	t.Helper()
	cfg, err := parseConfig(u, testOpts(ns))
	if err != nil {
		t.Fatal(err)
	}
	cfg.pollOnly = pollOnly
	st, err := openPrivate(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	role := func(name string) *role {
		st.retain()
		return newRole(st, cfg, name)
	}
	h := &handle{
		st:      st,
		broker:  &Broker{role: role("broker")},
		results: &Results{role: role("results"), ttl: cfg.resultTTL},
		control: &Control{role: role("control"), subs: make(map[*subscription]struct{})},
	}
	t.Cleanup(func() {
		_ = h.broker.Close()
		_ = h.results.Close()
		_ = h.control.Close()
		if err := st.release(); err != nil {
			t.Errorf("close handle: %v", err)
		}
	})
	return h
}

func tempURL(t testing.TB, name string) (u, path string) {
	path = filepath.Join(t.TempDir(), name)
	return "sqlite://" + path, path
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func env(id, queue string) *stemtype.Envelope {
	return &stemtype.Envelope{ID: id, Task: "t", Queue: queue, CreatedAt: time.Now()}
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct{ url, path string }{
		{"sqlite:///var/lib/stem/stem.db", "/var/lib/stem/stem.db"},
		{"sqlite://stem.db", "stem.db"},
		{"sqlite://data/stem.db", "data/stem.db"},
		{"sqlite://./data/../stem.db", "stem.db"},
		{"sqlite:///tmp/with%20space.db?result_ttl=1h", "/tmp/with space.db"},
	} {
		got, err := PathFromURL(tc.url)
		if err != nil || got != tc.path {
			t.Errorf("PathFromURL(%q) = %q, %v; want %q", tc.url, got, err, tc.path)
		}
	}
	for _, tc := range []struct{ url, want string }{
		{"sqlite://", "names no file"},
		{"sqlite:///tmp/", "directory"},
		{"sqlite:///tmp/x.db?mode=ro", `unknown option "mode"`},
		{"sqlite:///tmp/x.db?result_ttl=soon", "result_ttl"},
		{"sqlite:///tmp/x.db?result_ttl=-1h", "result_ttl"},
		{"postgres://localhost/x", "want sqlite://"},
		{"sqlite:///tmp/x%3F.db", "'?'"},
	} {
		_, err := PathFromURL(tc.url)
		if err == nil || !errors.Is(err, stemdriver.ErrBadConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("PathFromURL(%q) error = %v; want a bad config error saying %q", tc.url, err, tc.want)
		}
	}
	cfg, err := parseConfig("sqlite:///x.db?result_ttl=90m", stemdriver.Options{})
	if err != nil || cfg.resultTTL != 90*time.Minute || cfg.namespace != stemtype.DefaultNamespace {
		t.Fatalf("parseConfig: %+v, %v", cfg, err)
	}
}

func TestRelativePathIsTheWorkingDirectorys(t *testing.T) {
	t.Chdir(t.TempDir())
	ctx := testCtx(t)
	b := opened[*Broker](t)(OpenBroker(ctx, "sqlite://rel.db", testOpts("rel")))
	if _, err := os.Stat("rel.db"); err != nil {
		t.Fatalf("no rel.db in the working directory after open: %v", err)
	}
	if err := b.Publish(ctx, env("r1", "q")); err != nil {
		t.Fatal(err)
	}
}

func TestMissingDirectoryIsAClearError(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "missing")
	_, err := OpenBroker(testCtx(t), "sqlite://"+dir+"/stem.db", testOpts("x"))
	if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("open in a missing directory: %v; want an error naming %s", err, dir)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("open created %s: %v", dir, err)
	}
}

func TestGarbageFileIsRefusedAndLeftUntouched(t *testing.T) {
	u, path := tempURL(t, "garbage.db")
	garbage := bytes.Repeat([]byte("this is not a database\n"), 400)
	if err := os.WriteFile(path, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, open := range []func() error{
		func() error { _, err := OpenBroker(testCtx(t), u, testOpts("x")); return err },
		func() error { _, err := OpenControl(testCtx(t), u, testOpts("x")); return err },
	} {
		err := open()
		if err == nil || !strings.Contains(err.Error(), path) || !errors.Is(err, errNotSQLite) {
			t.Fatalf("open of a garbage file: %v; want an error naming %s that says it is not SQLite", err, path)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, garbage) {
		t.Fatalf("garbage file changed by the open (%v)", err)
	}
	for _, side := range []string{"-wal", "-shm", "-journal", lockSuffix} {
		if _, err := os.Stat(path + side); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("open of a garbage file left %s%s (%v)", path, side, err)
		}
	}
}

func TestOtherProgramsDatabaseIsRefused(t *testing.T) {
	u, path := tempURL(t, "other.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)"); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	_, err = OpenResults(testCtx(t), u, testOpts("x"))
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "another program") {
		t.Fatalf("open of another program's database: %v", err)
	}
}

func TestNewerSchemaVersionIsRefused(t *testing.T) {
	ctx := testCtx(t)
	u, path := tempURL(t, "newer.db")
	b, err := OpenBroker(ctx, u, testOpts("x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(fmt.Sprintf("PRAGMA user_version = %d", schemaVersion+1)); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	_, err = OpenBroker(ctx, u, testOpts("x"))
	if !errors.Is(err, stemdriver.ErrBadConfig) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "newer than this stem knows") {
		t.Fatalf("open of a file with a newer schema: %v", err)
	}
}

// Several processes (here: private handles) opening a new file at once
// create its schema once, and every one of them can use it.
func TestConcurrentOpensOfNewFileMigrateOnce(t *testing.T) {
	const n = 8
	u, path := tempURL(t, "fresh.db")
	var wg sync.WaitGroup
	start := make(chan struct{})
	hs := make([]*handle, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			<-start
			cfg, err := parseConfig(u, testOpts("fresh"))
			if err != nil {
				errs[i] = err
				return
			}
			st, err := openPrivate(context.Background(), cfg)
			if err != nil {
				errs[i] = err
				return
			}
			hs[i] = &handle{st: st, broker: &Broker{role: newRole(st, cfg, "broker")}}
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("open %d of a new file: %v", i, err)
		}
	}
	ctx := testCtx(t)
	for i, h := range hs {
		if err := h.broker.Publish(ctx, env(fmt.Sprint("m", i), "q")); err != nil {
			t.Errorf("publish through handle %d: %v", i, err)
		}
	}
	if d, err := hs[0].broker.Depth(ctx, "q"); err != nil || d != n {
		t.Errorf("depth after %d publishes: %d, %v", n, d, err)
	}
	for _, h := range hs {
		if err := h.broker.Close(); err != nil {
			t.Error(err)
		}
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v, tables int
	if err := db.QueryRow("PRAGMA user_version").Scan(&v); err != nil || v != schemaVersion {
		t.Fatalf("user_version = %d, %v; want %d", v, err, schemaVersion)
	}
	if err := db.QueryRow("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name LIKE 'stem_%'").Scan(&tables); err != nil || tables != 9 {
		t.Fatalf("%d stem tables, %v; want 9", tables, err)
	}
}

// The roles of one process share one handle per file, closed with the last.
func TestOneHandlePerFile(t *testing.T) {
	ctx := testCtx(t)
	u, path := tempURL(t, "shared.db")
	b, err := OpenBroker(ctx, u, testOpts("a"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := OpenResults(ctx, "sqlite://"+filepath.Dir(path)+"/./shared.db", testOpts("b"))
	if err != nil {
		t.Fatal(err)
	}
	if b.st != r.st {
		t.Fatal("two roles of one file have two handles")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Put(ctx, &stemtype.TaskResult{ID: "x", State: stemtype.StatePending}); err != nil {
		t.Fatalf("put after another role of the handle closed: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	stores.mu.Lock()
	_, still := stores.m[path]
	stores.mu.Unlock()
	if still {
		t.Fatal("handle still registered after its last role closed")
	}
}

// Two handles of one file (two processes) writing hard at once: no busy or
// locked error reaches a caller, and nothing is lost or delivered twice.
func TestTwoHandlesHeavyWritesNeverSeeBusy(t *testing.T) {
	const perWriter, writers = 300, 3
	u, _ := tempURL(t, "busy.db")
	ctx := testCtx(t)
	hs := []*handle{openHandle(t, u, "busy"), openHandle(t, u, "busy")}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		seen = map[string]int{}
		errs []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	for hi, h := range hs {
		for w := range writers {
			wg.Go(func() { // producers: small batches and results
				for i := 0; i < perWriter; i += 5 {
					var batch []*stemtype.Envelope
					for j := range 5 {
						batch = append(batch, env(fmt.Sprintf("h%d-w%d-%d", hi, w, i+j), "q"))
					}
					if err := h.broker.Publish(ctx, batch...); err != nil {
						fail(err)
						return
					}
					if err := h.results.Put(ctx, &stemtype.TaskResult{ID: batch[0].ID, State: stemtype.StatePending}); err != nil {
						fail(err)
						return
					}
				}
			})
		}
		wg.Go(func() { // a consumer on each handle
			for ctx.Err() == nil {
				mu.Lock()
				done := len(seen) == 2*writers*perWriter || len(errs) > 0
				mu.Unlock()
				if done {
					return
				}
				ds, err := h.broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 20,
					Lease: time.Minute, Wait: 50 * time.Millisecond})
				if err != nil {
					fail(err)
					return
				}
				if len(ds) == 0 {
					continue
				}
				mu.Lock()
				for _, d := range ds {
					seen[d.Envelope.ID]++
				}
				mu.Unlock()
				if err := h.broker.Ack(ctx, ds...); err != nil {
					fail(err)
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		t.Errorf("error under concurrent writes from two handles: %v", err)
	}
	if len(seen) != 2*writers*perWriter {
		t.Fatalf("%d distinct messages consumed, want %d", len(seen), 2*writers*perWriter)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("message %s delivered %d times", id, n)
		}
	}
}

// A Claim blocked on one handle wakes for a publish through another (another
// process): only the change watcher can wake it, with its WAL notifier and
// by polling alone.
func TestClaimWakesForPublishOfAnotherHandle(t *testing.T) {
	for _, pollOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("pollOnly=%v", pollOnly), func(t *testing.T) {
			u, _ := tempURL(t, "wake.db")
			ctx := testCtx(t)
			a, b := openHandleWith(t, u, "wake", pollOnly), openHandle(t, u, "wake")
			if got := a.st.watch.wal != nil; got == pollOnly && runtime.GOOS == "linux" {
				t.Fatalf("watcher has a WAL notifier: %v, want %v", got, !pollOnly)
			}
			got := make(chan []stemdriver.Delivery, 1)
			errc := make(chan error, 1)
			go func() {
				ds, err := a.broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 1,
					Lease: time.Minute, Wait: time.Hour})
				if err != nil {
					errc <- err
					return
				}
				got <- ds
			}()
			waitForWaiter(t, a.st)
			if err := b.broker.Publish(ctx, env("cross", "q")); err != nil {
				t.Fatal(err)
			}
			select {
			case ds := <-got:
				if len(ds) != 1 || ds[0].Envelope.ID != "cross" {
					t.Fatalf("claimed %+v, want the message published through the other handle", ds)
				}
			case err := <-errc:
				t.Fatal(err)
			case <-ctx.Done():
				t.Fatal("a Claim blocked on one handle never woke for a publish through another")
			}
		})
	}
}

// waitForWaiter waits until someone waits on st's watcher (the goroutine
// under test is blocked), polling: there is no event to await.
func waitForWaiter(t *testing.T, st *store) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); st.watch.idle(); {
		if time.Now().After(deadline) {
			t.Fatal("nobody waits on the watcher")
		}
		time.Sleep(time.Millisecond)
	}
}

// A subscription on one handle receives what another handle publishes, and
// a Replies call on one handle the replies stored through another.
func TestControlAcrossHandles(t *testing.T) {
	u, _ := tempURL(t, "control.db")
	ctx := testCtx(t)
	a, b := openHandle(t, u, "ctl"), openHandle(t, u, "ctl")
	sub, err := a.control.Subscribe(ctx, "w1")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := b.control.Publish(ctx, []string{"w2"}, []byte("not yours")); err != nil {
		t.Fatal(err)
	}
	if err := b.control.Publish(ctx, []string{"w1"}, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := b.control.Publish(ctx, nil, []byte("all")); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ping", "all"} {
		select {
		case msg := <-sub.C():
			if string(msg) != want {
				t.Fatalf("subscription received %q, want %q", msg, want)
			}
		case <-ctx.Done():
			t.Fatalf("subscription on one handle never received %q published through another", want)
		}
	}

	if err := a.control.Reply(ctx, "req-1", []byte("early")); err != nil {
		t.Fatal(err)
	}
	var replies []string
	errc := make(chan error, 1)
	go func() {
		errc <- b.control.Replies(ctx, "req-1", func(msg []byte) bool {
			replies = append(replies, string(msg))
			return len(replies) < 2
		})
	}()
	waitForWaiter(t, b.st)
	if err := a.control.Reply(ctx, "req-1", []byte("late")); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if strings.Join(replies, ",") != "early,late" {
		t.Fatalf("replies %q, want early,late", replies)
	}
}

// The pruner deletes expired results, old control messages and replies and
// expired presence, in every namespace, and keeps the rest.
func TestRetentionDeletesExpiredRows(t *testing.T) {
	u, _ := tempURL(t, "retention.db")
	ctx := testCtx(t)
	long := openHandle(t, u, "keep")
	shortCfg := u + "?result_ttl=1h"
	short := opened[*Results](t)(OpenResults(ctx, shortCfg, testOpts("short")))
	forever := opened[*Results](t)(OpenResults(ctx, u+"?result_ttl=0", testOpts("forever")))

	if err := short.Put(ctx, &stemtype.TaskResult{ID: "old", State: stemtype.StateSucceeded}); err != nil {
		t.Fatal(err)
	}
	if err := forever.Put(ctx, &stemtype.TaskResult{ID: "kept", State: stemtype.StateSucceeded}); err != nil {
		t.Fatal(err)
	}
	if err := long.control.Publish(ctx, nil, []byte("cmd")); err != nil {
		t.Fatal(err)
	}
	if err := long.control.Reply(ctx, "r", []byte("reply")); err != nil {
		t.Fatal(err)
	}
	if err := long.control.Announce(ctx, stemtype.WorkerInfo{ID: "w", Instance: "i"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := long.broker.Publish(ctx, env("task", "q")); err != nil {
		t.Fatal(err)
	}
	ds, err := long.broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 1, Lease: time.Minute})
	if err != nil || len(ds) != 1 {
		t.Fatalf("claim: %v %v", ds, err)
	}
	if err := long.broker.DeadLetter(ctx, ds[0], "poison"); err != nil {
		t.Fatal(err)
	}

	// Nothing is old yet.
	if n, err := long.st.prune(ctx, time.Now()); err != nil || n != 0 {
		t.Fatalf("prune of fresh rows deleted %d (%v)", n, err)
	}
	// Two hours on: the result with a one-hour ttl, the control message,
	// the reply and the presence are gone.
	n, err := long.st.prune(ctx, time.Now().Add(2*time.Hour))
	if err != nil || n != 4 {
		t.Fatalf("prune two hours on deleted %d rows (%v), want 4", n, err)
	}
	for table, want := range map[string]int{"stem_results": 1, "stem_control": 0, "stem_replies": 0,
		"stem_presence": 0, "stem_dead_letters": 1, "stem_tasks": 0} {
		var got int
		if err := long.st.read.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&got); err != nil || got != want {
			t.Errorf("%s holds %d rows after the prune (%v), want %d", table, got, err, want)
		}
	}
	if _, err := short.Get(ctx, "old"); !errors.Is(err, stemdriver.ErrNotFound) {
		t.Errorf("expired result: %v, want ErrNotFound", err)
	}
	if r, err := forever.Get(ctx, "kept"); err != nil || r.State != stemtype.StateSucceeded {
		t.Errorf("result kept forever: %+v, %v", r, err)
	}
	dls, err := long.broker.DeadLetters(ctx, "q", 0)
	if err != nil || len(dls) != 1 || dls[0].Reason != "poison" || dls[0].TaskID != "task" {
		t.Fatalf("dead letters %+v, %v", dls, err)
	}
}

// An expired result is gone for readers before the pruner runs, and a
// final one that expired may be written again.
func TestExpiredResultIsNotFound(t *testing.T) {
	ctx := testCtx(t)
	u, _ := tempURL(t, "expiry.db")
	r := opened[*Results](t)(OpenResults(ctx, u+"?result_ttl=1ns", testOpts("e")))
	if err := r.Put(ctx, &stemtype.TaskResult{ID: "a", State: stemtype.StateFailed}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(ctx, "a"); !errors.Is(err, stemdriver.ErrNotFound) {
		t.Fatalf("Get of an expired result: %v", err)
	}
	if got, err := r.GetMany(ctx, "a"); err != nil || got[0] != nil {
		t.Fatalf("GetMany of an expired result: %+v %v", got, err)
	}
}

// Priorities: higher first, then publish order.
func TestPriorityOrder(t *testing.T) {
	ctx := testCtx(t)
	u, _ := tempURL(t, "prio.db")
	b := opened[*Broker](t)(OpenBroker(ctx, u, testOpts("p")))
	var envs []*stemtype.Envelope
	for i, p := range []int{0, 5, 0, 9, 5} {
		e := env(fmt.Sprint("m", i), "q")
		e.Priority = p
		envs = append(envs, e)
	}
	if err := b.Publish(ctx, envs...); err != nil {
		t.Fatal(err)
	}
	ds, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 5, Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, d := range ds {
		order = append(order, d.Envelope.ID)
	}
	if got := strings.Join(order, ","); got != "m3,m1,m4,m0,m2" {
		t.Fatalf("claim order %s, want m3,m1,m4,m0,m2", got)
	}
}

// A stored message that does not decode (written by a foreign or broken
// producer) is delivered with DecodeErr and its raw bytes, and can be
// dead-lettered.
func TestUndecodableMessage(t *testing.T) {
	ctx := testCtx(t)
	u, _ := tempURL(t, "undecodable.db")
	h := openHandle(t, u, "u")
	bad := []byte(`{"id":"bad","attempt":"zero"}`)
	if _, err := h.st.write.ExecContext(ctx, insertTask, "u", "q", 0, 1, rowReady, 0, "bad", bad); err != nil {
		t.Fatal(err)
	}
	ds, err := h.broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 1, Lease: time.Minute})
	if err != nil || len(ds) != 1 {
		t.Fatalf("claim: %+v %v", ds, err)
	}
	if ds[0].DecodeErr == nil || ds[0].Envelope != nil || !bytes.Equal(ds[0].Raw, bad) {
		t.Fatalf("delivery of an undecodable message: %+v", ds[0])
	}
	if err := h.broker.DeadLetter(ctx, ds[0], "undecodable"); err != nil {
		t.Fatal(err)
	}
	dls, err := h.broker.DeadLetters(ctx, "q", 10)
	if err != nil || len(dls) != 1 || !bytes.Equal(dls[0].Raw, bad) {
		t.Fatalf("dead letters: %+v %v", dls, err)
	}
}

// A receipt this broker did not issue is a lost lease, never a panic.
func TestForeignReceiptIsLeaseLost(t *testing.T) {
	ctx := testCtx(t)
	u, _ := tempURL(t, "receipt.db")
	b := opened[*Broker](t)(OpenBroker(ctx, u, testOpts("r")))
	for _, rc := range []string{"", "x", "1", "1.x", "-1.1", "1.0"} {
		d := stemdriver.Delivery{Queue: "q", Receipt: rc}
		if err := b.Ack(ctx, d); !errors.Is(err, stemdriver.ErrLeaseLost) {
			t.Errorf("Ack of receipt %q: %v", rc, err)
		}
		if err := b.ExtendLease(ctx, d, time.Second); !errors.Is(err, stemdriver.ErrLeaseLost) {
			t.Errorf("ExtendLease of receipt %q: %v", rc, err)
		}
	}
}

// retryBusy runs a write again while another connection holds the lock,
// and gives up with the context's error when the context ends first.
func TestRetryBusyWaitsForTheLock(t *testing.T) {
	ctx := testCtx(t)
	u, path := tempURL(t, "lock.db")
	h := openHandle(t, u, "lock")
	holder, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	impatient, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(0)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer impatient.Close()
	lock := func() *sql.Conn {
		c, err := holder.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
			t.Fatal(err)
		}
		return c
	}
	tryWrite := func() error {
		tx, err := impatient.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		return tx.Rollback()
	}

	held := lock()
	attempts := 0
	err = h.st.retryBusy(ctx, quiet(), "test", func() error {
		attempts++
		if attempts == 3 { // a fourth may meet the handle's own pruner

			if _, err := held.ExecContext(ctx, "COMMIT"); err != nil {
				t.Fatal(err)
			}
			_ = held.Close()
		}
		return tryWrite()
	})
	if err != nil || attempts < 3 {
		t.Fatalf("retryBusy: %v after %d attempts; want success once the lock was released at the third", err, attempts)
	}

	held = lock()
	defer func() { _, _ = held.ExecContext(ctx, "ROLLBACK"); _ = held.Close() }()
	short, cancel := context.WithCancel(ctx)
	attempts = 0
	err = h.st.retryBusy(short, quiet(), "test", func() error {
		if attempts++; attempts == 2 {
			cancel()
		}
		return tryWrite()
	})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("retryBusy with the lock held and the context cancelled: %v", err)
	}
	if isBusy(err) {
		t.Fatalf("retryBusy returned a busy error: %v", err)
	}
}

// The write lock of one handle (process) holds off the writers of another
// until released; a writer that gives up waiting leaves the lock usable.
func TestWriteLockAcrossHandles(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no flock")
	}
	ctx := testCtx(t)
	u, _ := tempURL(t, "wlock.db")
	a, b := openHandle(t, u, "l"), openHandle(t, u, "l")
	unlockA, err := a.st.wlock.lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		_, err := b.st.wlock.lock(short)
		errc <- err
	}()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("lock given up while the other handle held it: %v", err)
	}
	published := make(chan error, 1)
	go func() { published <- b.broker.Publish(ctx, env("after", "q")) }()
	select {
	case err := <-published:
		t.Fatalf("publish through another handle while the lock was held: %v", err)
	default:
	}
	unlockA()
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	if d, err := a.broker.Depth(ctx, "q"); err != nil || d != 1 {
		t.Fatalf("depth %d, %v", d, err)
	}
}
