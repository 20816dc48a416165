package stemcli_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemcli"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
	"github.com/stem-go/stem/stemurl"
)

// update rewrites the golden files under testdata/golden instead of
// comparing against them: go test ./stemcli/ -run Golden -update
var update = flag.Bool("update", false, "rewrite the golden files of the CLI's output")

// cliEnv is one in-process stem installation for golden tests: a Resolver
// (so every command and the worker share the memory:// hub), a registry,
// the environment the commands read, and the task ids the output names,
// replaced by stable names before comparison.
type cliEnv struct {
	t        *testing.T
	resolver *stemurl.Resolver
	reg      *stem.Registry
	env      map[string]string
	ids      map[string]string // task id -> placeholder such as <ok>
	// started receives the id of each "block" task once it runs; release
	// lets it return.
	started chan string
	release chan struct{}
}

func newCLIEnv(t *testing.T) *cliEnv {
	t.Helper()
	e := &cliEnv{
		t:        t,
		resolver: stemurl.New(),
		reg:      stem.NewRegistry(),
		// The in-process backend, shared through e.resolver, in place
		// of the embedded default's file.
		env:     map[string]string{stemurl.EnvBroker: "memory://"},
		ids:     map[string]string{},
		started: make(chan string, 1),
		release: make(chan struct{}),
	}
	stem.Register(e.reg, "ok", func(_ *stem.TaskContext, args map[string]int) (any, error) {
		return map[string]int{"sum": args["a"] + args["b"]}, nil
	}, stem.TaskOptions{})
	stem.Register(e.reg, "fail", func(*stem.TaskContext, any) (any, error) {
		return nil, errors.New("boom")
	}, stem.TaskOptions{})
	stem.Register(e.reg, "parked", func(*stem.TaskContext, any) (any, error) {
		return "never runs: no worker consumes its queue", nil
	}, stem.TaskOptions{Queue: "parked"})
	stem.Register(e.reg, "block", func(tc *stem.TaskContext, _ any) (any, error) {
		e.started <- tc.TaskID()
		select {
		case <-e.release:
			return "released", nil
		case <-tc.Done():
			return nil, tc.Err()
		}
	}, stem.TaskOptions{})
	return e
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// run runs the CLI in process with args and returns its exit code, stdout
// and stderr.
func (e *cliEnv) run(args ...string) (int, string, string) {
	e.t.Helper()
	var stdout, stderr bytes.Buffer
	code := stemcli.Main(stemcli.Config{
		Registry: e.reg,
		Stdout:   &stdout, Stderr: &stderr,
		Getenv:   func(k string) string { return e.env[k] },
		Resolver: e.resolver,
	}, args)
	return code, stdout.String(), stderr.String()
}

// name records the placeholder that replaces id in compared output.
func (e *cliEnv) name(id, placeholder string) {
	e.t.Helper()
	if id == "" {
		e.t.Fatal("empty task id")
	}
	e.ids[id] = "<" + placeholder + ">"
}

// enqueue enqueues task via the CLI and returns its id.
func (e *cliEnv) enqueue(task string, extra ...string) string {
	e.t.Helper()
	code, out, errOut := e.run(append([]string{"enqueue", task}, extra...)...)
	if code != 0 {
		e.t.Fatalf("enqueue %s: exit %d\n%s", task, code, errOut)
	}
	return strings.TrimSpace(out)
}

// wait waits until the task's state is final.
func (e *cliEnv) wait(id string) *stemtype.TaskResult {
	e.t.Helper()
	hub := e.resolver.Hub("")
	opts := stemdriver.Options{Namespace: stemtype.DefaultNamespace}
	client, err := stem.NewClient(stem.ClientConfig{Broker: hub.Broker(opts), Results: hub.Results(opts), Registry: e.reg})
	must(e.t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := client.Wait(ctx, id)
	must(e.t, err)
	return r
}

// startWorker runs a real worker "w1" on the memory:// hub the CLI opens,
// consuming only the default queue, until the test ends.
func (e *cliEnv) startWorker() {
	e.t.Helper()
	hub := e.resolver.Hub("")
	opts := stemdriver.Options{Namespace: stemtype.DefaultNamespace}
	w, err := stem.NewWorker(stem.WorkerConfig{
		ID: "w1", Namespace: opts.Namespace, Queues: []string{stemtype.DefaultQueue}, Concurrency: 2,
		Registry: e.reg, Broker: hub.Broker(opts), Results: hub.Results(opts), Revokes: hub.Revokes(),
		Control: hub.Control(opts), Logger: slog.New(slog.DiscardHandler),
	})
	must(e.t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("worker: %v", err)
		}
	})
	select {
	case <-w.Ready():
	case err := <-done:
		e.t.Fatalf("worker ended before it was ready: %v", err)
	}
}

var (
	reTime      = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`)
	reRequestID = regexp.MustCompile(`"requestId": "[^"]*"`)
	reNumbers   = regexp.MustCompile(`"(pid|uptimeMs|runtimeMs|version)": \d+`)
	reHost      = regexp.MustCompile(`"host": "[^"]*"`)
	// Human tables, once their gaps are collapsed: the uptime column of
	// stats (after its host and pid) and the runtime column of inspect's
	// in-flight tasks.
	reStatsRow = regexp.MustCompile(`(?m)^(\S+)  \S+  \d+  (\d+/\d+)  `)
	reUptime   = regexp.MustCompile(`(?m)^(\S+  <host>  <pid>(?:  \S+){6})  \S+`)
	reRuntime  = regexp.MustCompile(`(?m)^(  <[a-z0-9]+>  \S+  \S+  \d+)  \S+`)
	reReplied  = regexp.MustCompile(`replied in \S+`)
	reTaskID   = regexp.MustCompile(`\b[0-9a-f]{32}\b`)
	reSpaces   = regexp.MustCompile(`(\S) {2,}`)
)

// normalise replaces what differs between runs (task ids, timestamps,
// request ids, pids, host names, durations) with placeholders. Tables are
// compared with their column gaps collapsed to two spaces, since a
// placeholder's width differs from the value it replaces.
func (e *cliEnv) normalise(s string) string {
	for id, p := range e.ids {
		s = strings.ReplaceAll(s, id, p)
	}
	s = reTaskID.ReplaceAllString(s, "<id>")
	s = reTime.ReplaceAllString(s, "<time>")
	s = reRequestID.ReplaceAllString(s, `"requestId": "<req>"`)
	s = reNumbers.ReplaceAllString(s, `"$1": <n>`)
	s = reReplied.ReplaceAllString(s, "replied in <dur>")
	s = reHost.ReplaceAllString(s, `"host": "<host>"`)
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = reSpaces.ReplaceAllString(l, "$1  ")
	}
	s = strings.Join(lines, "\n")
	s = reStatsRow.ReplaceAllString(s, "$1  <host>  <pid>  ${2}  ")
	s = reUptime.ReplaceAllString(s, "$1  <dur>")
	return reRuntime.ReplaceAllString(s, "$1  <dur>")
}

// check runs args and compares exit code, stdout and stderr, normalised,
// with testdata/golden/NAME.golden.
func (e *cliEnv) check(name string, args ...string) {
	e.t.Helper()
	code, out, errOut := e.run(args...)
	got := e.normalise(fmt.Sprintf("$ stem %s\nexit %d\n--- stdout\n%s--- stderr\n%s", shellJoin(args), code, out, errOut))
	path := filepath.Join("testdata", "golden", name+".golden")
	if *update {
		must(e.t, os.MkdirAll(filepath.Dir(path), 0o755))
		must(e.t, os.WriteFile(path, []byte(got), 0o644))
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		e.t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		e.t.Errorf("%s: output differs from %s (run with -update to rewrite)\n--- got\n%s\n--- want\n%s", name, path, got, want)
	}
}

// shellJoin renders args as a command line, quoting those that are empty
// or hold blanks or quotes, so that a golden file's first line reads as the
// command that made it.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		if a == "" || strings.ContainsAny(a, " \t\"'{}*") {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
}

// TestGoldenTaskCommands: enqueue and task status, human and --json, for a
// task in each state (pending, succeeded, failed, cancelled with the
// revoke's metadata), and a task the result backend does not know.
func TestGoldenTaskCommands(t *testing.T) {
	e := newCLIEnv(t)
	e.check("enqueue", "enqueue", "ok", "--args", `{"a":1,"b":2}`)
	e.check("enqueue_json", "enqueue", "parked", "--json")
	e.check("enqueue_json_queue", "enqueue", "ok", "--queue", "elsewhere", "--json")

	pending := e.enqueue("parked")
	e.name(pending, "pending")
	e.check("status_pending", "task", "status", pending)
	e.check("status_pending_json", "task", "status", pending, "--json")

	e.startWorker()
	ok := e.enqueue("ok", "--args", `{"a":40,"b":2}`)
	e.name(ok, "ok")
	failed := e.enqueue("fail")
	e.name(failed, "failed")
	e.wait(ok)
	e.wait(failed)
	e.check("status_succeeded", "task", "status", ok)
	e.check("status_succeeded_json", "task", "status", ok, "--json")
	e.check("status_failed", "task", "status", failed)
	e.check("status_failed_json", "task", "status", failed, "--json")

	code, _, errOut := e.run("worker", "revoke", "--task", pending, "--reason", "not needed", "--requester", "golden")
	if code != 0 {
		t.Fatalf("revoke: exit %d\n%s", code, errOut)
	}
	e.wait(pending)
	e.check("status_cancelled", "task", "status", pending)
	e.check("status_cancelled_json", "task", "status", pending, "--json")

	e.check("status_unknown", "task", "status", "0123456789abcdef0123456789abcdef")
}

// TestGoldenWorkerCommands: ping, inspect (with a task in flight, with and
// without --include-revoked and --limit), stats and revoke (known and
// unknown ids), human and --json, against a live worker in this process.
func TestGoldenWorkerCommands(t *testing.T) {
	e := newCLIEnv(t)
	const unknown1, unknown2 = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
	e.name(unknown1, "unknown1")
	e.name(unknown2, "unknown2")
	e.check("ping_no_worker", "worker", "ping", "--timeout", "200ms")
	e.check("revoke_no_worker", "worker", "revoke", "--task", unknown1, "--timeout", "200ms")
	e.startWorker()
	e.check("ping", "worker", "ping")
	e.check("ping_json", "worker", "ping", "--json")
	e.check("ping_other_namespace", "--namespace", "other", "worker", "ping", "--timeout", "200ms")
	e.env = map[string]string{"STEM_NAMESPACE": "other", "STEM_BROKER_URL": "memory://"}
	e.check("stats_other_namespace_env", "worker", "stats", "--worker", "w1", "--timeout", "200ms")
	e.env = map[string]string{"STEM_BROKER_URL": "memory://"}
	// w9 is not live, so the ping returns with w1's reply: the timeout only
	// bounds a hang.
	e.check("ping_missing", "worker", "ping", "--worker", "w1", "--worker", "w9", "--timeout", "30s")

	ok := e.enqueue("ok", "--args", `{"a":1,"b":1}`)
	e.name(ok, "ok")
	e.wait(ok)
	parked := e.enqueue("parked")
	e.name(parked, "parked")
	block := e.enqueue("block")
	e.name(block, "block")
	if got := <-e.started; got != block {
		t.Fatalf("started %s, want %s", got, block)
	}
	var once sync.Once
	releaseBlock := func() { once.Do(func() { close(e.release) }) }
	t.Cleanup(releaseBlock)

	e.check("inspect", "worker", "inspect")
	e.check("inspect_json", "worker", "inspect", "--json")
	e.check("stats", "worker", "stats")
	e.check("stats_json", "worker", "stats", "--json")

	e.check("revoke_known", "worker", "revoke", "--task", parked, "--reason", "not needed", "--requester", "golden")
	e.check("revoke_known_json", "worker", "revoke", "--task", parked, "--json", "--requester", "golden")
	e.check("revoke_unknown", "worker", "revoke", "--task", unknown1, "--requester", "golden")
	e.check("revoke_unknown_json", "worker", "revoke", "--task", unknown1, "--json", "--requester", "golden")
	e.check("revoke_mixed_json", "worker", "revoke", "--task", ok, "--task", unknown2, "--json")

	e.check("inspect_revoked", "worker", "inspect", "--include-revoked")
	e.check("inspect_revoked_json", "worker", "inspect", "--include-revoked", "--json")
	e.check("inspect_revoked_limit", "worker", "inspect", "--include-revoked", "--limit", "1")
	e.check("inspect_revoked_limit_json", "worker", "inspect", "--include-revoked", "--limit", "1", "--json")
	// Neither slot waits: one is free. The worker reports its (empty)
	// buffer when asked.
	e.check("inspect_reserved", "worker", "inspect", "--reserved")
	e.check("inspect_reserved_json", "worker", "inspect", "--reserved", "--json")

	releaseBlock()
	e.wait(block)
	e.check("stats_after", "worker", "stats")
}

// TestGoldenErrors: usage errors exit 64 and configuration errors exit 78,
// each with its message on stderr and nothing on stdout.
func TestGoldenErrors(t *testing.T) {
	e := newCLIEnv(t)
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"usage_unknown_command", nil, []string{"bogus"}},
		{"usage_unknown_subcommand", nil, []string{"worker", "bogus"}},
		{"usage_unknown_flag", nil, []string{"worker", "ping", "--bogus"}},
		{"usage_help_unknown_topic", nil, []string{"help", "bogus"}},
		{"usage_completion_unknown_shell", nil, []string{"completion", "bogus"}},
		{"usage_enqueue_no_task", nil, []string{"enqueue"}},
		{"usage_enqueue_bad_args", nil, []string{"enqueue", "ok", "--args", "{"}},
		{"usage_status_two_ids", nil, []string{"task", "status", "a", "b"}},
		{"usage_revoke_no_task", nil, []string{"worker", "revoke"}},
		{"usage_revoke_kill_after", nil, []string{"worker", "revoke", "--task", "x", "--kill-after", "1s"}},
		{"usage_inspect_limit", nil, []string{"worker", "inspect", "--limit", "1"}},
		{"usage_inspect_negative_limit", nil, []string{"worker", "inspect", "--include-revoked", "--limit", "-1"}},
		{"usage_timeout", nil, []string{"worker", "ping", "--timeout", "0s"}},
		{"usage_start_concurrency", nil, []string{"worker", "start", "--concurrency", "0"}},
		{"usage_start_broadcast_id", nil, []string{"worker", "start", "--id", "*"}},
		{"usage_start_empty_queue", nil, []string{"worker", "start", "--queue", " "}},
		{"config_log_level", map[string]string{"STEM_LOG_LEVEL": "loud"}, []string{"worker", "ping"}},
		{"config_unknown_scheme", nil, []string{"--broker", "bogus://h", "worker", "ping"}},
		{"config_postgres_bad_query", map[string]string{"STEM_BROKER_URL": "postgres://u:secret@h/db?search_path=a;"}, []string{"enqueue", "ok"}},
		{"config_memory_revokes_beside_redis", nil, []string{"--broker", "redis://127.0.0.1:1/0", "--revoke-store", "memory://", "worker", "revoke", "--task", "x"}},
		{"config_revoke_expiry", map[string]string{"STEM_REVOKE_DEFAULT_EXPIRY": "soon"}, []string{"worker", "revoke", "--task", "x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.t = t
			e.env = tc.env
			e.check(tc.name, tc.args...)
		})
	}
}
