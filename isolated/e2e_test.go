package isolated_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/stem-go/stem/internal/testutil"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemredis"
	"github.com/stem-go/stem/stemtype"
)

// The end-to-end tests run the stem binary TestMain built: `stem worker
// start` and CLI commands as separate processes against the test Redis,
// each test in a namespace of its own.

// pollEvery is the pause between two polls of a condition that has no
// event to wait on (another process's state).
const pollEvery = 20 * time.Millisecond

// deployment is one test's namespace on the test Redis.
type deployment struct {
	t   *testing.T
	ns  string
	url string
	env []string
}

func newDeployment(t *testing.T) *deployment {
	t.Helper()
	url := needRedis(t)
	d := &deployment{t: t, ns: "iso-" + stem.NewTaskID()[:12], url: url}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "STEM_") {
			d.env = append(d.env, kv)
		}
	}
	d.env = append(d.env, "STEM_BROKER_URL="+url, "STEM_NAMESPACE="+d.ns)
	testutil.CleanupNamespace(t, url, d.ns)
	return d
}

// stem runs a CLI command, which must succeed, and returns its stdout.
func (d *deployment) stem(args ...string) string {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, stemBin, args...)
	cmd.Env = d.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		d.t.Fatalf("stem %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, &stdout, &stderr)
	}
	return stdout.String()
}

// workerProc is a `stem worker start` process.
type workerProc struct {
	id   string
	cmd  *exec.Cmd
	log  *testutil.SyncBuffer
	done chan struct{}
	err  error
}

// startWorker starts a worker and waits until it answers a ping. It is
// killed when the test ends; its log is printed if the test failed.
func (d *deployment) startWorker(id string, flags ...string) *workerProc {
	d.t.Helper()
	t := d.t
	cmd := exec.Command(stemBin, append([]string{"worker", "start", "--id", id}, flags...)...)
	cmd.Env = d.env
	w := &workerProc{id: id, cmd: cmd, log: &testutil.SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = w.log, w.log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start worker: %v", err)
	}
	go func() {
		w.err = cmd.Wait()
		close(w.done)
	}()
	t.Cleanup(func() {
		select {
		case <-w.done:
		default:
			_ = cmd.Process.Kill()
			<-w.done
		}
		if strings.Contains(w.log.String(), "DATA RACE") {
			t.Errorf("race detected in worker %s:\n%s", id, w.log)
		} else if t.Failed() {
			t.Logf("worker %s log:\n%s", id, w.log)
		}
	})
	d.eventually("worker "+id+" answering a ping", func() bool {
		select {
		case <-w.done:
			t.Fatalf("worker %s exited: %v\n%s", id, w.err, w.log)
		default:
		}
		cmd := exec.Command(stemBin, "worker", "ping", "--worker", id, "--timeout", "500ms")
		cmd.Env = d.env
		return cmd.Run() == nil
	})
	return w
}

// eventually polls cond until it holds, failing the test after
// waitTimeout.
func (d *deployment) eventually(what string, cond func() bool) {
	d.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			d.t.Fatalf("no %s within %s", what, waitTimeout)
		}
		time.Sleep(pollEvery)
	}
}

func (d *deployment) enqueue(task, args string) string {
	d.t.Helper()
	return strings.TrimSpace(d.stem("enqueue", task, "--args", args))
}

// status is the --json output of `stem task status`.
type status struct {
	State  string            `json:"state"`
	Result json.RawMessage   `json:"result"`
	Error  string            `json:"error"`
	Meta   map[string]string `json:"meta"`
}

func (d *deployment) status(id string) status {
	d.t.Helper()
	var s status
	if err := json.Unmarshal([]byte(d.stem("task", "status", id, "--json")), &s); err != nil {
		d.t.Fatalf("task status: %v", err)
	}
	return s
}

// waitFinal waits until the task reaches a final state and returns it.
func (d *deployment) waitFinal(id string) status {
	d.t.Helper()
	var s status
	d.eventually("final state of task "+id, func() bool {
		s = d.status(id)
		return stemtype.State(s.State).Final()
	})
	return s
}

// active returns the worker's in-flight tasks, by id.
func (d *deployment) active(workerID string) map[string]stemtype.ActiveTask {
	d.t.Helper()
	var reps []stemtype.ControlReply
	if err := json.Unmarshal([]byte(d.stem("worker", "inspect", "--worker", workerID, "--include-revoked=false", "--json")), &reps); err != nil || len(reps) != 1 {
		d.t.Fatalf("inspect: %d replies, %v", len(reps), err)
	}
	var p stemtype.InspectReply
	if err := json.Unmarshal(reps[0].Payload, &p); err != nil {
		d.t.Fatalf("inspect payload %s: %v", reps[0].Payload, err)
	}
	out := make(map[string]stemtype.ActiveTask, len(p.Active))
	for _, a := range p.Active {
		out[a.ID] = a
	}
	return out
}

func (d *deployment) stats(workerID string) stemtype.StatsReply {
	d.t.Helper()
	var reps []stemtype.ControlReply
	if err := json.Unmarshal([]byte(d.stem("worker", "stats", "--worker", workerID, "--json")), &reps); err != nil || len(reps) != 1 {
		d.t.Fatalf("stats: %d replies, %v", len(reps), err)
	}
	var s stemtype.StatsReply
	if err := json.Unmarshal(reps[0].Payload, &s); err != nil {
		d.t.Fatalf("stats payload: %v", err)
	}
	return s
}

// resultPID returns the pid in a task's result.
func resultPID(t *testing.T, s status) int {
	t.Helper()
	var r pidResult
	if err := json.Unmarshal(s.Result, &r); err != nil || r.PID == 0 {
		t.Fatalf("result %s has no pid: %v", s.Result, err)
	}
	return r.PID
}

// childrenOf returns the pids of the live (not zombie) child processes of
// pid, from /proc.
func childrenOf(t *testing.T, pid int) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	var out []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		state, ppid, ok := procStat(p)
		if ok && ppid == pid && state != "Z" {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// procStat returns a process's state and parent pid from /proc/PID/stat.
func procStat(pid int) (state string, ppid int, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, false
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return "", 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return "", 0, false
	}
	ppid, err = strconv.Atoi(f[1])
	return f[0], ppid, err == nil
}

// alive reports whether pid is a live (not zombie) process.
func alive(pid int) bool {
	state, _, ok := procStat(pid)
	return ok && state != "Z"
}

func openFDs(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("open fds of %d: %v", pid, err)
	}
	return len(entries)
}

func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("status of %d: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return n
		}
	}
	return -1
}

// TestE2ETerminateSleepIsolated: `revoke --terminate` stops a heartbeating
// isolated task at its next heartbeat; it ends cancelled with the revoke's
// details, and the worker and its child carry on.
func TestE2ETerminateSleepIsolated(t *testing.T) {
	t.Parallel()
	d := newDeployment(t)
	w := d.startWorker("w1", "--concurrency", "1")
	id := d.enqueue("demo.sleep-isolated", `{"seconds":60,"heartbeat":0.05}`)
	var a stemtype.ActiveTask
	d.eventually("progress and a heartbeat of the isolated task in inspect", func() bool {
		a = d.active("w1")[id]
		return a.Progress != nil && !a.LastHeartbeatAt.IsZero()
	})
	if !a.Isolated || a.Task != "demo.sleep-isolated" || a.Terminating {
		t.Errorf("inspect shows %+v, want an isolated task, not terminating", a)
	}
	d.stem("worker", "revoke", "--task", id, "--terminate", "--reason", "changed my mind", "--requester", "e2e")
	s := d.waitFinal(id)
	if s.State != "cancelled" || s.Meta["revokedReason"] != "changed my mind" || s.Meta["revokedBy"] != "e2e" {
		t.Errorf("final status = %+v, want cancelled with the revoke's reason and requester", s)
	}
	st := d.stats("w1")
	if st.Cancelled != 1 || st.Failed != 0 || st.Inflight != 0 {
		t.Errorf("stats = %+v, want one task cancelled, none failed or in flight", st)
	}
	// The child returned on its own: the next task runs in the same one.
	children := childrenOf(t, w.cmd.Process.Pid)
	next := d.waitFinal(d.enqueue("demo.sleep-isolated", `{"seconds":0}`))
	if next.State != "succeeded" || len(children) != 1 || resultPID(t, next) != children[0] {
		t.Errorf("next task %+v in children %v: want it to succeed in the same child", next, children)
	}
}

// TestE2ESpinKillAfter: a spinning isolated task ignores `--terminate`
// (inspect shows it terminating and still active); a later `--terminate
// --kill-after 500ms` kills its child, the task ends cancelled, and the
// next isolated task runs in a fresh child.
func TestE2ESpinKillAfter(t *testing.T) {
	t.Parallel()
	d := newDeployment(t)
	w := d.startWorker("w1", "--concurrency", "1")
	id := d.enqueue("demo.spin-isolated", `{"seconds":120}`)
	d.eventually("spinning task in inspect", func() bool {
		_, ok := d.active("w1")[id]
		return ok
	})
	children := childrenOf(t, w.cmd.Process.Pid)
	if len(children) != 1 {
		t.Fatalf("worker children = %v, want the one child running the task", children)
	}
	spinner := children[0]

	d.stem("worker", "revoke", "--task", id, "--terminate")
	// The revoke reply came back: the worker relayed the cancel before
	// answering, and the spinning task does not listen.
	a, ok := d.active("w1")[id]
	if !ok || !a.Terminating || !a.Isolated {
		t.Fatalf("after --terminate, inspect shows %+v (active %v), want the task still active and terminating", a, ok)
	}
	if s := d.status(id); s.State != "started" {
		t.Errorf("after --terminate alone the task is %s, want still started", s.State)
	}
	if !alive(spinner) {
		t.Errorf("child %d died on --terminate alone", spinner)
	}

	d.stem("worker", "revoke", "--task", id, "--terminate", "--kill-after", "500ms", "--reason", "runaway")
	// The result carries the latest revoke's reason.
	if s := d.waitFinal(id); s.State != "cancelled" || s.Meta["revokedBy"] != "stem-cli" || s.Meta["revokedReason"] != "runaway" {
		t.Errorf("final status = %+v, want cancelled by the second revoke", s)
	}
	d.eventually("the killed child to be gone", func() bool { return !alive(spinner) })

	next := d.waitFinal(d.enqueue("demo.sleep-isolated", `{"seconds":0}`))
	if next.State != "succeeded" || resultPID(t, next) == spinner {
		t.Errorf("next task = %+v, want it to succeed in a fresh child (not %d)", next, spinner)
	}
	if st := d.stats("w1"); st.Cancelled != 1 || st.Succeeded != 1 || st.Failed != 0 {
		t.Errorf("stats = %+v, want one cancelled and one succeeded", st)
	}
}

// TestE2ECrashFreshChild: a child that panics, or exits, mid-task fails
// that task (not retried, the worker alive) and the next task runs in a
// fresh child.
func TestE2ECrashFreshChild(t *testing.T) {
	t.Parallel()
	d := newDeployment(t)
	w := d.startWorker("w1", "--concurrency", "1")
	before := resultPID(t, d.waitFinal(d.enqueue("demo.sleep-isolated", `{"seconds":0}`)))
	for _, tc := range []struct{ args, want string }{
		{`{"mode":"panic"}`, "task panicked: in isolated child: demo.crash-isolated: panic requested"},
		{`{"mode":"exit","code":9}`, "exited mid-task (child exit status 9; last output: demo.crash-isolated: exiting with status 9"},
	} {
		s := d.waitFinal(d.enqueue("demo.crash-isolated", tc.args))
		if s.State != "failed" || !strings.Contains(s.Error, tc.want) {
			t.Errorf("crash %s: final status %+v, want failed mentioning %q", tc.args, s, tc.want)
		}
		next := d.waitFinal(d.enqueue("demo.sleep-isolated", `{"seconds":0}`))
		pid := resultPID(t, next)
		if next.State != "succeeded" || pid == before {
			t.Errorf("after crash %s: next task %+v in pid %d, want success in a fresh child (not %d)", tc.args, next, pid, before)
		}
		before = pid
	}
	st := d.stats("w1")
	if st.Failed != 2 || st.Succeeded != 3 || st.Retried != 0 {
		t.Errorf("stats = %+v, want 2 failed, 3 succeeded, no retry", st)
	}
	if c := childrenOf(t, w.cmd.Process.Pid); len(c) != 1 {
		t.Errorf("worker children = %v, want one", c)
	}
}

// TestE2EWorkerDeathEndsChildren: a worker killed with SIGKILL leaves no
// child behind: each reads the end of its stdin and exits, even one
// spinning in a task.
func TestE2EWorkerDeathEndsChildren(t *testing.T) {
	t.Parallel()
	d := newDeployment(t)
	w := d.startWorker("w1", "--concurrency", "2")
	id := d.enqueue("demo.spin-isolated", `{"seconds":120}`)
	d.eventually("spinning task in inspect", func() bool {
		_, ok := d.active("w1")[id]
		return ok
	})
	children := childrenOf(t, w.cmd.Process.Pid)
	if len(children) == 0 {
		t.Fatal("worker has no children")
	}
	if err := w.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-w.done
	d.eventually("the dead worker's children to exit", func() bool {
		return !slices.ContainsFunc(children, alive)
	})
}

// TestE2EWarmShutdownStopsChildren: SIGTERM shuts the worker down warmly;
// a spinning isolated task is cancelled at the end of the grace period,
// its child killed after the pool's shutdown grace (half the worker's),
// the task released (not failed), and the worker exits cleanly with no
// child left.
func TestE2EWarmShutdownStopsChildren(t *testing.T) {
	t.Parallel()
	d := newDeployment(t)
	w := d.startWorker("w1", "--concurrency", "1", "--shutdown-timeout", "200ms")
	id := d.enqueue("demo.spin-isolated", `{"seconds":120}`)
	d.eventually("spinning task in inspect", func() bool {
		_, ok := d.active("w1")[id]
		return ok
	})
	children := childrenOf(t, w.cmd.Process.Pid)
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.done:
	case <-time.After(waitTimeout):
		t.Fatalf("worker did not exit within %s of SIGTERM", waitTimeout)
	}
	if w.err != nil {
		t.Errorf("worker exit: %v", w.err)
	}
	if slices.ContainsFunc(children, alive) {
		t.Errorf("children %v outlived the worker", children)
	}
	if s := d.status(id); stemtype.State(s.State).Final() {
		t.Errorf("task after shutdown: %+v, want it released to run again, not final", s)
	}
}

// TestE2EManyTasksSteadyResources runs thousands of isolated tasks, some
// of them crashing their child in turn by each way a child can break (it
// exits, it is killed with SIGKILL, it writes garbage on its protocol
// stream, it panics), through one worker: each such task fails, the next
// task gets a fresh child, the worker's open descriptors and children stay
// bounded (a leak per task or per replaced child would show in hundreds),
// and its RSS is reported. Set ISOLATED_TEST_TASKS to run more.
func TestE2EManyTasksSteadyResources(t *testing.T) {
	t.Parallel()
	d := newDeployment(t)
	const concurrency = 4
	w := d.startWorker("w1", "--concurrency", strconv.Itoa(concurrency))
	pid := w.cmd.Process.Pid

	ctx := context.Background()
	broker, err := stemredis.OpenBroker(ctx, d.url, stemdriver.Options{Namespace: d.ns})
	if err != nil {
		t.Fatal(err)
	}
	defer broker.Close()
	client, err := stem.NewClient(stem.ClientConfig{Broker: broker})
	if err != nil {
		t.Fatal(err)
	}
	processed := int64(0)
	crashModes := []string{"exit", "kill", "garbage", "panic"}
	var crashIDs []string
	// runBatch enqueues n tasks, one in every crashEvery a crash (by each
	// mode in turn), and waits until the worker processed them.
	runBatch := func(n, crashEvery int) {
		t.Helper()
		reqs := make([]stem.EnqueueRequest, n)
		var crashes []int
		for i := range reqs {
			reqs[i] = stem.EnqueueRequest{Task: "demo.sleep-isolated", Args: json.RawMessage(`{"seconds":0}`)}
			if crashEvery > 0 && i%crashEvery == crashEvery-1 {
				mode := crashModes[(len(crashIDs)+len(crashes))%len(crashModes)]
				reqs[i] = stem.EnqueueRequest{Task: "demo.crash-isolated", Args: json.RawMessage(`{"mode":"` + mode + `"}`)}
				crashes = append(crashes, i)
			}
		}
		ids, err := client.EnqueueBatch(ctx, reqs)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range crashes {
			crashIDs = append(crashIDs, ids[i])
		}
		processed += int64(n)
		// A failure bound on progress, not on the whole batch: the
		// batch's duration depends on the machine's load.
		last, lastAt := int64(-1), time.Now()
		for {
			got := d.stats("w1").Processed
			if got >= processed {
				break
			}
			if got != last {
				last, lastAt = got, time.Now()
			} else if time.Since(lastAt) > waitTimeout {
				t.Fatalf("worker stuck at %d of %d tasks processed for %s", got, processed, waitTimeout)
			}
			time.Sleep(pollEvery)
		}
	}
	// settled waits until no replaced child is still exiting.
	settled := func() []int {
		var c []int
		d.eventually("at most one child per slot", func() bool {
			c = childrenOf(t, pid)
			return len(c) <= concurrency
		})
		return c
	}

	// Warm up: every slot gets a child, connection pools fill.
	runBatch(400, 50)
	c0, fd0, rss0 := settled(), openFDs(t, pid), rssKiB(t, pid)

	// ISOLATED_TEST_TASKS scales the run for a soak test by hand.
	n, crashEvery := 2000, 50
	if v, err := strconv.Atoi(os.Getenv("ISOLATED_TEST_TASKS")); err == nil && v > 0 {
		n = v
	}
	start := time.Now()
	runBatch(n, crashEvery)
	elapsed := time.Since(start)
	c1, fd1, rss1 := settled(), openFDs(t, pid), rssKiB(t, pid)

	st := d.stats("w1")
	wantFailed := int64(400/50 + n/crashEvery)
	if st.Failed != wantFailed || st.Succeeded != processed-wantFailed {
		t.Errorf("stats = %+v, want %d failed (the crashes) and the rest succeeded", st, wantFailed)
	}
	// Each crash failed its own task, saying how its child broke.
	wantErr := map[string]string{
		"exit":    "exited mid-task (child exit status 3",
		"kill":    "signal: killed",
		"garbage": "frame too large",
		"panic":   "task panicked: in isolated child",
	}
	for i, id := range crashIDs[:min(len(crashIDs), 2*len(crashModes))] {
		mode := crashModes[i%len(crashModes)]
		s := d.status(id)
		if s.State != "failed" || !strings.Contains(s.Error, wantErr[mode]) {
			t.Errorf("task crashing by mode %s: %+v, want failed with an error mentioning %q", mode, s, wantErr[mode])
		}
	}
	// Each child costs the worker 3 descriptors (its pipes) and a pidfd;
	// allow for that and a few pooled connections, far below the 40
	// replaced children and 2000 tasks of the run.
	if slack := 4*(len(c1)-len(c0)) + 8; fd1 > fd0+slack {
		t.Errorf("worker's open descriptors grew from %d to %d over %d tasks (children %d then %d)", fd0, fd1, n, len(c0), len(c1))
	}
	if len(c1) > concurrency {
		t.Errorf("worker has %d children, want at most %d", len(c1), concurrency)
	}
	t.Logf("%d isolated tasks (%d crashes) in %s (%.0f tasks/s); worker fds %d -> %d, children %d -> %d, RSS %d KiB -> %d KiB",
		n, n/crashEvery, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), fd0, fd1, len(c0), len(c1), rss0, rss1)
}
