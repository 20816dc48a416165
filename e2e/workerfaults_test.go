package e2e

import (
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemurl"
)

// privateRedis is a redis-server of one test, on a port of its own, that
// the test starts when it chooses: the store that is down at first.
type privateRedis struct {
	t    *testing.T
	port int
	dir  string
	cmd  *exec.Cmd
}

// newPrivateRedis picks a free port for a redis-server that is not
// started yet.
func newPrivateRedis(t *testing.T) *privateRedis {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		testutil.SkipOrFail(t, "redis-server not on PATH (needed to start a private server): %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	return &privateRedis{t: t, port: port, dir: t.TempDir()}
}

func (r *privateRedis) url() string  { return "redis://127.0.0.1:" + strconv.Itoa(r.port) + "/0" }
func (r *privateRedis) addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

// start starts the server and returns when it accepts connections; it is
// stopped when the test ends.
func (r *privateRedis) start() {
	t := r.t
	t.Helper()
	r.cmd = exec.Command("redis-server", "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir, "--logfile", filepath.Join(r.dir, "redis.log"))
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = r.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = r.cmd.Process.Signal(syscall.SIGTERM)
		<-exited
	})
	deadline := time.Now().Add(waitTimeout)
	for {
		if c, err := net.DialTimeout("tcp", r.addr(), time.Second); err == nil {
			_ = c.Close()
			return
		}
		select {
		case <-exited:
			t.Fatalf("redis-server on %s exited at start", r.addr())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s does not accept connections after %s", r.addr(), waitTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startedAt returns when the task started, as its result records it
// (`stem task status` does not print it).
func (c *cluster) startedAt(id string) time.Time {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	o, err := stemurl.New().Open(ctx, stemurl.URLs{Broker: c.url, Results: c.url, Revokes: c.url},
		stemurl.RoleResults, stemdriver.Options{Namespace: c.ns, Logger: quietLogger()})
	if err != nil {
		c.t.Fatal(err)
	}
	defer o.Close()
	r, err := o.Results.Get(ctx, id)
	if err != nil {
		c.t.Fatal(err)
	}
	if r.StartedAt.IsZero() {
		c.t.Fatalf("task %s records no start: %s", id, mustJSON(r))
	}
	return r.StartedAt
}

// TestWorkerWaitsForRevokeStore (fault matrix: revoke store unreachable
// when a worker starts): the worker claims nothing (its tasks stay
// pending, it is not live, it does not exit) while its revoke store is
// down, and logs why at each retry; once the store starts, it loads the
// revoke set and consumes within 5 s of the store's return (the figure;
// the worker retries at most 2 s apart, so the slack covers a loaded
// machine's process and connection start-up).
func TestWorkerWaitsForRevokeStore(t *testing.T) {
	t.Parallel()
	c := newCluster(t, redisStore)
	rev := newPrivateRedis(t)
	c.vars["STEM_REVOKE_STORE_URL"] = rev.url()
	var ids []string
	for range 3 {
		ids = append(ids, c.enqueue("demo.echo", `{"n":1}`))
	}
	w := c.spawnWorker(nil, "wr")
	w.waitLog(t, "revoke store unreachable at start")
	out := w.waitLog(t, "attempt=3") // it retries, it does not give up
	for _, s := range []string{rev.addr(), "STEM_REVOKE_STORE_URL", "retry_in="} {
		if !strings.Contains(out, s) {
			t.Errorf("the worker's log does not say %q:\n%s", s, out)
		}
	}
	for _, id := range ids {
		if s := c.status(id); s.State != "pending" {
			t.Fatalf("task %s is %s while the revoke store is down, want pending (nothing claimed)", id, s.State)
		}
	}
	if r := c.run("worker", "stats", "--worker", "wr", "--timeout", "200ms"); r.code != 70 {
		t.Errorf("the waiting worker answers stats (it must not be live before it loaded the revoke set): %s", r)
	}
	if w.exited() {
		t.Fatalf("the worker exited while waiting for its revoke store:\n%s", w.stderr)
	}

	up := time.Now()
	rev.start()
	first := time.Time{}
	for _, id := range ids {
		c.waitState(id, "succeeded")
		if s := c.startedAt(id); first.IsZero() || s.Before(first) {
			first = s
		}
	}
	took := first.Sub(up)
	t.Logf("first task started %s after the revoke store started", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("the first task started %s after the revoke store's return, want under 5s", took)
	}
}

// TestWorkerWaitsForBroker (fault matrix: broker unreachable when a worker
// starts): the worker waits, saying why, instead of exiting 69; once the
// broker starts it consumes within 5 s (the figure, as above). With
// --fail-fast it exits 69 at once, without retrying.
func TestWorkerWaitsForBroker(t *testing.T) {
	t.Parallel()
	b := newPrivateRedis(t)
	ns := "e2e-" + randomHex(6)
	c := &cluster{t: t, ns: ns, url: b.url(), redis: b.url(),
		vars: map[string]string{"STEM_NAMESPACE": ns, "STEM_BROKER_URL": b.url()}}

	r := c.run("worker", "start", "--id", "ff", "--fail-fast")
	if r.code != 69 || !strings.Contains(r.stderr, b.addr()) || strings.Contains(r.stderr, "retrying") {
		t.Errorf("--fail-fast: want exit 69 at once naming %s, got %s", b.addr(), r)
	}

	w := c.spawnWorker(nil, "wb")
	out := w.waitLog(t, "attempt=3")
	for _, s := range []string{"broker unreachable at start", b.addr(), "retry_in="} {
		if !strings.Contains(out, s) {
			t.Errorf("the worker's log does not say %q:\n%s", s, out)
		}
	}
	if w.exited() {
		t.Fatalf("the worker exited while waiting for its broker:\n%s", w.stderr)
	}
	up := time.Now()
	b.start()
	id := c.enqueue("demo.echo", `{"n":1}`)
	c.waitState(id, "succeeded")
	took := c.startedAt(id).Sub(up)
	t.Logf("the task started %s after the broker started", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("the task started %s after the broker's return, want under 5s", took)
	}
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	if code := w.wait(t); code != 0 {
		t.Errorf("worker exit %d after SIGTERM, want 0", code)
	}
}

// TestSIGTERMMidRunLosesNothing (fault matrix: SIGTERM during a run), on
// each backend: two ledger workers drain a few hundred tasks and one is
// sent SIGTERM midway. It shuts down warmly and exits 0: its running tasks
// finish within the grace period, the tasks it claimed and had not started
// go back to the broker and the other worker runs them. The figure: lost 0
// (every task is in the ledger and succeeded), and no task ran twice (a
// warm shutdown finishes or releases each task, it never abandons one).
func TestSIGTERMMidRunLosesNothing(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		const total = 400
		c := newCluster(t, store)
		c.bin = ledgerBin
		ledger := filepath.Join(t.TempDir(), "ledger")
		c.vars["LEDGER_FILE"] = ledger
		// A prefetch as deep as it goes, so that the victim holds claimed,
		// unstarted tasks when the signal lands.
		flags := []string{"--concurrency", "4", "--prefetch", "40"}
		victim := c.startWorker("t1", flags...)
		survivor := c.startWorker("t2", flags...)

		ctx, cancel := context.WithTimeout(context.Background(), 3*waitTimeout)
		defer cancel()
		o := c.stores(ctx, stemurl.RoleBroker|stemurl.RoleResults)
		client, err := stem.NewClient(stem.ClientConfig{Broker: o.Broker, Results: o.Results, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		reqs := make([]stem.EnqueueRequest, total)
		for i := range reqs {
			reqs[i] = stem.EnqueueRequest{Task: "ledger.append", Args: map[string]int{"ms": 20}}
		}
		ids, err := client.EnqueueBatch(ctx, reqs)
		if err != nil {
			t.Fatal(err)
		}

		waitLedger(t, ledger, total/4)
		if err := victim.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := victim.wait(t); code != 0 {
			t.Fatalf("the worker sent SIGTERM exited %d, want 0:\n%s", code, victim.stderr)
		}
		atExit := readLedger(t, ledger)

		waitAllSucceeded(t, ctx, o.Results, ids)

		runs := readLedger(t, ledger)
		vpid, spid := strconv.Itoa(victim.cmd.Process.Pid), strconv.Itoa(survivor.cmd.Process.Pid)
		lost, twice, byVictim, afterExit := 0, 0, 0, 0
		for _, id := range ids {
			switch n := len(runs[id]); {
			case n == 0:
				lost++
			case n > 1:
				twice++
				t.Errorf("task %s ran %d times (pids %v)", id, n, runs[id])
			}
			for _, p := range runs[id] {
				if p == vpid {
					byVictim++
				}
			}
			if len(atExit[id]) == 0 && len(runs[id]) > 0 && runs[id][0] == spid {
				afterExit++
			}
		}
		t.Logf("%s: %d tasks: lost %d, ran twice %d; the terminated worker ran %d, the other ran %d after its exit",
			store, total, lost, twice, byVictim, afterExit)
		if lost != 0 {
			t.Errorf("lost %d tasks, want 0", lost)
		}
		if byVictim == 0 || afterExit == 0 {
			t.Errorf("the SIGTERM did not land mid-run: the terminated worker ran %d tasks, the other %d after its exit",
				byVictim, afterExit)
		}
		if out := victim.stderr.String(); !strings.Contains(out, "worker shutting down") || !strings.Contains(out, "worker stopped") {
			t.Errorf("the terminated worker did not log a warm shutdown:\n%s", out)
		}
	})
}

// TestWorkerRefusesOversizedPayload (fault matrix: payload over the
// configured maximum): a worker started with --max-payload fails a task
// whose arguments are larger, naming the size and the limit, without
// running it, and runs the next one.
func TestWorkerRefusesOversizedPayload(t *testing.T) {
	t.Parallel()
	c := newCluster(t, redisStore)
	c.startWorker("wp", "--max-payload", "100")
	big := c.enqueue("demo.echo", `{"blob":"`+strings.Repeat("x", 200)+`"}`)
	small := c.enqueue("demo.echo", `{"n":1}`)
	s := c.waitState(big, "failed")
	if s.Error == nil || !strings.Contains(*s.Error, "211 bytes") || !strings.Contains(*s.Error, "limit of 100 bytes") {
		t.Errorf("oversized task: %+v, want an error naming its size (211 bytes) and the limit", s)
	}
	if s.Result != nil && string(s.Result) != "null" {
		t.Errorf("oversized task has a result %s: it ran", s.Result)
	}
	c.waitState(small, "succeeded")
}
