package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
	"github.com/stem-go/stem/stemurl"
)

const (
	// deadRedis is a Redis URL where nothing listens.
	deadRedis = "redis://127.0.0.1:1/0"

	// waitTimeout bounds every poll loop: a deadline, not a measurement,
	// generous because the machine running the tests may be loaded.
	waitTimeout = 60 * time.Second
	// pollEvery is the pause between two polls of a poll loop.
	pollEvery = 50 * time.Millisecond
)

var (
	// stemBin is the stem binary TestMain builds.
	stemBin string
	// tmpDir holds the binary and the shared revoke file.
	tmpDir string
	// sharedRevokeFile is the file revoke store every file-store test
	// shares (namespaces keep them apart), as several hosts would.
	sharedRevokeFile string
	// ledgerBin is the ledgerworker binary TestMain builds: the stem CLI
	// with a task that logs each execution to a file.
	ledgerBin string
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	// The tests mostly wait on other processes, so run more of them at once
	// than -parallel's default (GOMAXPROCS) unless -parallel was given.
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		_ = flag.Set("test.parallel", strconv.Itoa(max(8, runtime.GOMAXPROCS(0))))
	}
	dir, err := os.MkdirTemp("", "stem-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	tmpDir = dir
	sharedRevokeFile = filepath.Join(dir, "revokes.ndjson")
	stemBin = filepath.Join(dir, "stem")

	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(gomod)) == "" || strings.TrimSpace(string(gomod)) == os.DevNull {
		fmt.Fprintf(os.Stderr, "e2e: cannot locate the module root (go env GOMOD: %q, %v)\n", gomod, err)
		return 1
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	args := []string{"build"}
	if raceEnabled {
		args = append(args, "-race")
	}
	ledgerBin = filepath.Join(dir, "ledgerworker")
	for bin, pkg := range map[string]string{stemBin: "./cmd/stem", ledgerBin: "./e2e/ledgerworker"} {
		args := slices.Clone(args)
		if bin == ledgerBin {
			// Without -race: the fleet test is a fault test, and the race
			// detector slows the transpiled SQLite engine so much that
			// on a loaded machine it becomes a test of lease renewal
			// under a tenfold slowdown instead. Races in the same code
			// are the other tests' business.
			args = []string{"build"}
		}
		args = append(args, "-o", bin, pkg)
		build := exec.Command("go", args...)
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: go %s: %v\n%s", strings.Join(args, " "), err, out)
			return 1
		}
	}
	return m.Run()
}

// unset, as a value in a vars map, removes the variable from the
// environment of a command.
const unset = "\x00unset"

// baseEnviron is the test process's environment without any STEM_ variable,
// so that a developer's own settings never leak into a test, and with
// STEM_HOME in the test's temporary directory, so that a command that
// falls back to the embedded default never touches the developer's own
// file.
func baseEnviron() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "STEM_") && !strings.HasPrefix(kv, "GORACE=") {
			out = append(out, kv)
		}
	}
	return append(out, "STEM_HOME="+filepath.Join(tmpDir, "home"))
}

func environ(layers ...map[string]string) []string {
	merged := map[string]string{}
	for _, l := range layers {
		for k, v := range l {
			merged[k] = v
		}
	}
	env := baseEnviron()
	// A race-enabled binary sleeps a second at exit unless told not to.
	env = append(env, "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	keys := make([]string, 0, len(merged))
	for k := range merged {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if v := merged[k]; v != unset {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// otherDB returns u with another database number, for tests that need two
// stores on one server.
func otherDB(t *testing.T, u string) string {
	t.Helper()
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	db, _ := strconv.Atoi(strings.TrimPrefix(pu.Path, "/"))
	if db < 15 {
		db++
	} else {
		db--
	}
	pu.Path = "/" + strconv.Itoa(db)
	return pu.String()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// cluster is one test's stem deployment: a namespace of its own on the
// test backend, and the environment every command of the test runs with.
type cluster struct {
	t  *testing.T
	ns string
	// url is the broker's URL (the result backend, the control transport
	// and, by fallback, the revoke store share it).
	url string
	// redis is the test Redis's URL, set on the Redis backend only.
	redis string
	vars  map[string]string
	// bin is the binary spawnWorker starts; "" means stem.
	bin string
}

// backend is the kind of server a cluster's broker runs on.
type backend string

const (
	onRedis    backend = "redis"
	onSQLite   backend = "sqlite"
	onPostgres backend = "postgres"
)

// backends are those the control-plane tests run on.
var backends = []backend{onRedis, onSQLite, onPostgres}

// storeKind selects the backend of a cluster and its revoke store: the
// broker's own store by fallback, or the shared revoke file.
type storeKind struct {
	backend backend
	file    bool // the shared file, via STEM_REVOKE_STORE_URL
}

var (
	redisStore = storeKind{backend: onRedis}             // the broker's Redis (by fallback)
	fileStore  = storeKind{backend: onRedis, file: true} // the shared file beside Redis
)

func (k storeKind) String() string {
	if k.file {
		return "file"
	}
	return string(k.backend)
}

// newCluster returns a cluster whose broker and results are the test
// backend of store (through STEM_BROKER_URL), in a namespace of its own,
// and whose revoke store is of kind store.
func newCluster(t *testing.T, store storeKind) *cluster {
	t.Helper()
	ns := "e2e-" + randomHex(6)
	c := &cluster{t: t, ns: ns, vars: map[string]string{"STEM_NAMESPACE": ns}}
	switch store.backend {
	case onRedis:
		c.redis = testutil.NeedRedis(t)
		c.url = c.redis
		testutil.CleanupNamespace(t, c.redis, ns)
	default:
		c.url = backendURL(t, store.backend)
	}
	c.vars["STEM_BROKER_URL"] = c.url
	if store.file {
		c.vars["STEM_REVOKE_STORE_URL"] = "file://" + sharedRevokeFile
	}
	return c
}

// with returns c bound to t, for use in a subtest of c's test.
func (c *cluster) with(t *testing.T) *cluster {
	cc := *c
	cc.t = t
	return &cc
}

// result is a finished command.
type result struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("stem %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// run runs the stem binary with the cluster's environment.
func (c *cluster) run(args ...string) result {
	c.t.Helper()
	return c.runEnv(nil, args...)
}

// runEnv runs the stem binary with the cluster's environment overlaid with
// vars (unset removes a variable).
func (c *cluster) runEnv(vars map[string]string, args ...string) result {
	c.t.Helper()
	return runStem(c.t, environ(c.vars, vars), args...)
}

func runStem(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, stemBin, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		t.Fatalf("stem %s: %v\nstderr:\n%s", strings.Join(args, " "), err, r.stderr)
	}
	if strings.Contains(r.stderr, "DATA RACE") {
		t.Errorf("race detected in %s", r)
	}
	return r
}

// must runs a command that has to succeed and returns its stdout.
func (c *cluster) must(args ...string) string {
	c.t.Helper()
	r := c.run(args...)
	if r.code != 0 {
		c.t.Fatalf("want exit 0, got %s", r)
	}
	return r.stdout
}

// worker is a `stem worker start` process.
type worker struct {
	id     string
	cmd    *exec.Cmd
	stderr *testutil.SyncBuffer
	done   chan struct{}
	err    error // Wait's error, set before done is closed
}

// exited reports whether the process has ended.
func (w *worker) exited() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to end and returns its exit code.
func (w *worker) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-w.done:
	case <-time.After(waitTimeout):
		t.Fatalf("worker %s did not exit within %s", w.id, waitTimeout)
	}
	var ee *exec.ExitError
	switch {
	case w.err == nil:
		return 0
	case errors.As(w.err, &ee):
		return ee.ExitCode() // -1 when killed by a signal
	}
	t.Fatalf("worker %s: %v", w.id, w.err)
	return -1
}

// startWorker starts `stem worker start --id id flags...` and waits until it
// answers a ping. The process is killed when the test ends; its log is
// printed if the test failed.
func (c *cluster) startWorker(id string, flags ...string) *worker {
	c.t.Helper()
	w := c.spawnWorker(nil, id, flags...)
	c.waitReady(w)
	return w
}

// spawnWorker starts a worker process with the cluster's environment
// overlaid with vars, without waiting for it.
func (c *cluster) spawnWorker(vars map[string]string, id string, flags ...string) *worker {
	c.t.Helper()
	t := c.t
	args := append([]string{"worker", "start", "--id", id}, flags...)
	bin := stemBin
	if c.bin != "" {
		bin = c.bin
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = environ(c.vars, vars)
	w := &worker{id: id, cmd: cmd, stderr: &testutil.SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = w.stderr, w.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start worker %s: %v", id, err)
	}
	go func() {
		w.err = cmd.Wait()
		close(w.done)
	}()
	t.Cleanup(func() {
		if !w.exited() {
			_ = cmd.Process.Kill()
			<-w.done
		}
		log := w.stderr.String()
		if strings.Contains(log, "DATA RACE") {
			t.Errorf("race detected in worker %s", id)
		}
		if t.Failed() {
			t.Logf("worker %s (%s) output:\n%s", id, strings.Join(args, " "), log)
		}
	})
	return w
}

// waitLog waits until the worker's output contains s and returns the
// output. It fails when the worker exits first or after waitTimeout.
func (w *worker) waitLog(t *testing.T, s string) string {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		out := w.stderr.String()
		if strings.Contains(out, s) {
			return out
		}
		if w.exited() {
			t.Fatalf("worker %s exited without logging %q:\n%s", w.id, s, w.stderr.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker %s did not log %q within %s:\n%s", w.id, s, waitTimeout, out)
		}
		time.Sleep(pollEvery)
	}
}

// gate is a file whose creation ends every demo.sleep task given its path
// as untilFile: the test, not a duration, decides when such a task ends,
// so a loaded machine cannot make it end before the test looked at it.
type gate string

// newGate returns a closed gate of the test.
func newGate(t *testing.T) gate {
	return gate(filepath.Join(t.TempDir(), "gate"))
}

// sleepArgs are demo.sleep arguments for a task that runs until the gate
// opens (or, as a failure bound, for ten minutes).
func (g gate) sleepArgs() string {
	b, err := json.Marshal(map[string]any{"seconds": 600, "untilFile": string(g)})
	if err != nil {
		panic(err)
	}
	return string(b)
}

// open opens the gate: the tasks waiting on it end at their next
// checkpoint.
func (g gate) open(t *testing.T) {
	t.Helper()
	if err := os.WriteFile(string(g), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitReady polls `stem worker ping --worker ID` until the worker answers.
func (c *cluster) waitReady(w *worker) {
	c.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		r := c.run("worker", "ping", "--worker", w.id, "--timeout", "500ms")
		if r.code == 0 {
			return
		}
		if w.exited() {
			c.t.Fatalf("worker %s exited before answering a ping:\n%s", w.id, w.stderr)
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("worker %s did not answer a ping within %s; last: %s", w.id, waitTimeout, r)
		}
		time.Sleep(pollEvery)
	}
}

// enqueue enqueues task and returns its id.
func (c *cluster) enqueue(task, args string, flags ...string) string {
	c.t.Helper()
	out := c.must(append([]string{"enqueue", task, "--args", args}, flags...)...)
	return strings.TrimSpace(out)
}

// taskStatus is the --json output of `stem task status`.
type taskStatus struct {
	ID       string            `json:"id"`
	Task     string            `json:"task"`
	State    string            `json:"state"`
	Attempt  int               `json:"attempt"`
	Result   json.RawMessage   `json:"result"`
	Error    *string           `json:"error"`
	Progress json.RawMessage   `json:"progress"`
	Meta     map[string]string `json:"meta"`
}

func (c *cluster) status(id string) taskStatus {
	c.t.Helper()
	var s taskStatus
	decodeOne(c.t, c.must("task", "status", id, "--json"), &s)
	return s
}

// waitState polls the task's status until its state is want. It fails at
// once when the task reaches another final state.
func (c *cluster) waitState(id, want string) taskStatus {
	c.t.Helper()
	return c.waitStatus(id, "state "+want, func(s taskStatus) bool {
		if s.State != want && stemtype.State(s.State).Final() {
			c.t.Fatalf("task %s reached %s while waiting for %s: %+v", id, s.State, want, s)
		}
		return s.State == want
	})
}

// waitStatus polls the task's status until cond holds.
func (c *cluster) waitStatus(id, what string, cond func(taskStatus) bool) taskStatus {
	c.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		s := c.status(id)
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("task %s: no %s within %s; last status %+v", id, what, waitTimeout, s)
		}
		time.Sleep(pollEvery)
	}
}

// replies runs a worker control command with --json, which must exit 0,
// and returns the replies.
func (c *cluster) replies(args ...string) []stemtype.ControlReply {
	c.t.Helper()
	var out []stemtype.ControlReply
	decodeOne(c.t, c.must(append(args, "--json")...), &out)
	return out
}

// only returns the one reply of the list, from workerID.
func only(t *testing.T, reps []stemtype.ControlReply, workerID string) stemtype.ControlReply {
	t.Helper()
	if len(reps) != 1 || reps[0].WorkerID != workerID || reps[0].Status != stemtype.ReplyOK {
		t.Fatalf("want one ok reply from %s, got %s", workerID, mustJSON(reps))
	}
	return reps[0]
}

// inspect returns the worker's inspect reply with its whole revoke set.
func (c *cluster) inspect(workerID string) stemtype.InspectReply {
	c.t.Helper()
	rep := only(c.t, c.replies("worker", "inspect", "--worker", workerID, "--include-revoked", "--limit", "0"), workerID)
	var p stemtype.InspectReply
	decodeOne(c.t, string(rep.Payload), &p)
	return p
}

func (c *cluster) stats(workerID string) stemtype.StatsReply {
	c.t.Helper()
	rep := only(c.t, c.replies("worker", "stats", "--worker", workerID), workerID)
	var p stemtype.StatsReply
	decodeOne(c.t, string(rep.Payload), &p)
	return p
}

// waitStats polls the worker's stats until cond holds.
func (c *cluster) waitStats(workerID, what string, cond func(stemtype.StatsReply) bool) stemtype.StatsReply {
	c.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		s := c.stats(workerID)
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("worker %s: no %s within %s; last stats %s", workerID, what, waitTimeout, mustJSON(s))
		}
		time.Sleep(pollEvery)
	}
}

// decodeOne decodes s, which must hold exactly one JSON document, into v.
func decodeOne(t *testing.T, s string, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); err == nil || !errors.Is(err, io.EOF) {
		t.Fatalf("more than one JSON document in %q", s)
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%+v", v)
	}
	return string(b)
}

// keysOf returns the sorted keys of a JSON object.
func keysOf(t *testing.T, raw []byte) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("not a JSON object: %s: %v", raw, err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// fileRecords returns the records of namespace ns in a revoke file.
func fileRecords(t *testing.T, path, ns string) []stemtype.RevokeRecord {
	t.Helper()
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []stemtype.RevokeRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r stemtype.RevokeRecord
		if json.Unmarshal(sc.Bytes(), &r) == nil && r.Namespace == ns {
			out = append(out, r)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func hasRecord(recs []stemtype.RevokeRecord, taskID string) bool {
	return slices.ContainsFunc(recs, func(r stemtype.RevokeRecord) bool { return r.TaskID == taskID })
}

// storeKinds runs f as one subtest per revoke store kind: the broker's
// own store on each backend, and the shared file beside Redis.
func storeKinds(t *testing.T, f func(t *testing.T, store storeKind)) {
	kinds := []storeKind{fileStore}
	for _, b := range backends {
		kinds = append(kinds, storeKind{backend: b})
	}
	for _, k := range kinds {
		t.Run(k.String(), func(t *testing.T) {
			t.Parallel()
			f(t, k)
		})
	}
}

// eachBackend runs f as one subtest per backend, each with its broker's
// own revoke store.
func eachBackend(t *testing.T, f func(t *testing.T, store storeKind)) {
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			t.Parallel()
			f(t, storeKind{backend: b})
		})
	}
}

// stores opens roles of c's deployment in the test process (the stores its
// workers use), closed when the test ends.
func (c *cluster) stores(ctx context.Context, roles stemurl.Role) *stemurl.Opened {
	c.t.Helper()
	o, err := stemurl.New().Open(ctx, stemurl.URLs{Broker: c.url, Results: c.url, Revokes: c.url},
		roles, stemdriver.Options{Namespace: c.ns, Logger: quietLogger()})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = o.Close() })
	return o
}

// waitAllFinal waits until every task of ids is in a final state and
// returns their results, in the order of ids.
func waitAllFinal(t *testing.T, ctx context.Context, rb stemdriver.ResultBackend, ids []string) []*stemtype.TaskResult {
	t.Helper()
	deadline := time.Now().Add(3 * waitTimeout)
	for {
		rs, err := rb.GetMany(ctx, ids...)
		if err != nil {
			t.Fatal(err)
		}
		left := 0
		for _, r := range rs {
			if r == nil || !r.State.Final() {
				left++
			}
		}
		if left == 0 {
			return rs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d tasks not final after %s", left, len(ids), 3*waitTimeout)
		}
		time.Sleep(pollEvery)
	}
}

// waitAllSucceeded waits until every task of ids is final, and fails t
// unless each succeeded.
func waitAllSucceeded(t *testing.T, ctx context.Context, rb stemdriver.ResultBackend, ids []string) {
	t.Helper()
	for i, r := range waitAllFinal(t, ctx, rb, ids) {
		if r.State != stemtype.StateSucceeded {
			t.Fatalf("task %s: %s, want succeeded", ids[i], mustJSON(r))
		}
	}
}
