package stemsqlite

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemtype"
)

// envChildWorker, when set in a re-executed test binary, makes it a worker
// process of TestProcessesShareOneFile instead of running tests: the value
// is "URL|NAMESPACE|RUNLOG".
const envChildWorker = "STEM_SQLITE_TEST_CHILD_WORKER"

// serveChildWorker runs a worker on the file named by envChildWorker until
// SIGTERM, when the variable is set, and exits; it returns otherwise. Every
// run of the "work" task appends "TASKID PID" to RUNLOG when it starts.
func serveChildWorker() {
	spec := os.Getenv(envChildWorker)
	if spec == "" {
		return
	}
	parts := strings.SplitN(spec, "|", 3)
	if len(parts) != 3 {
		fmt.Fprintf(os.Stderr, "bad %s=%q\n", envChildWorker, spec)
		os.Exit(2)
	}
	if err := childWorker(parts[0], parts[1], parts[2]); err != nil {
		fmt.Fprintln(os.Stderr, "child worker:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func childWorker(u, ns, runlog string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	log, err := os.OpenFile(runlog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	opts := testOptsWith(ns, logger)
	b, err := OpenBroker(ctx, u, opts)
	if err != nil {
		return err
	}
	defer b.Close()
	r, err := OpenResults(ctx, u, opts)
	if err != nil {
		return err
	}
	defer r.Close()
	rv, err := OpenRevokes(ctx, u, opts)
	if err != nil {
		return err
	}
	defer rv.Close()
	c, err := OpenControl(ctx, u, opts)
	if err != nil {
		return err
	}
	defer c.Close()
	pid := strconv.Itoa(os.Getpid())
	reg := stem.NewRegistry()
	stem.Register(reg, "work", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		// One write per line: O_APPEND keeps lines whole, and the page
		// cache keeps them through a SIGKILL.
		if _, err := log.WriteString(tc.TaskID() + " " + pid + "\n"); err != nil {
			return nil, err
		}
		time.Sleep(time.Millisecond) // the task's work
		return "done", nil
	}, stem.TaskOptions{})
	w, err := stem.NewWorker(stem.WorkerConfig{Namespace: ns, Registry: reg, Broker: b, Results: r, Revokes: rv, Control: c,
		Logger: logger, Concurrency: 8, Lease: 10 * time.Second, ClaimWait: time.Second, PresenceInterval: time.Second})
	if err != nil {
		return err
	}
	return w.Run(ctx)
}

// Three worker processes and a producer share one file; one worker is
// killed with SIGKILL midway. Every task reaches a final state, no task runs
// twice unless it was in flight in the killed worker, and no "database is
// locked" surfaces in any process.
func TestProcessesShareOneFile(t *testing.T) {
	if testing.Short() {
		t.Skip("runs worker processes")
	}
	const tasks, workers = 3000, 3
	dir := t.TempDir()
	u := "sqlite://" + filepath.Join(dir, "shared.db")
	ns := "procs"
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	type child struct {
		cmd    *exec.Cmd
		out    *testutil.SyncBuffer
		runlog string
	}
	children := make([]*child, workers)
	for i := range children {
		c := &child{out: &testutil.SyncBuffer{}, runlog: filepath.Join(dir, fmt.Sprintf("runs-%d.log", i))}
		c.cmd = exec.Command(os.Args[0], "-test.run=^$")
		c.cmd.Env = append(os.Environ(), envChildWorker+"="+u+"|"+ns+"|"+c.runlog)
		c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
		if err := c.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		children[i] = c
		t.Cleanup(func() {
			if c.cmd.ProcessState == nil {
				_ = c.cmd.Process.Kill()
				_ = c.cmd.Wait()
			}
		})
	}

	r := roles(t, u, ns)
	// Wait for the three workers to announce themselves (polled: presence
	// is a state, not an event).
	for {
		ws, err := r.Control.Workers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(ws) == workers {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("%d of %d workers announced; output: %s %s %s", len(ws), workers,
				children[0].out, children[1].out, children[2].out)
		}
		time.Sleep(20 * time.Millisecond)
	}

	client, err := stem.NewClient(stem.ClientConfig{Broker: r.Broker, Results: r.Results, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, 0, tasks)
	for len(ids) < tasks {
		batch := make([]stem.EnqueueRequest, 100)
		for i := range batch {
			batch[i] = stem.EnqueueRequest{Task: "work"}
		}
		got, err := client.EnqueueBatch(ctx, batch)
		if err != nil {
			t.Fatalf("enqueue: %v", err)
		}
		ids = append(ids, got...)
	}

	// Kill the first worker once it has run a few hundred tasks.
	victim := children[0]
	for lines(t, victim.runlog) < 200 {
		if ctx.Err() != nil {
			t.Fatalf("the first worker ran %d tasks", lines(t, victim.runlog))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = victim.cmd.Wait()
	victimPID := strconv.Itoa(victim.cmd.Process.Pid)

	// Every task reaches a final state (polled: results are states).
	for {
		rs, err := r.Results.GetMany(ctx, ids...)
		if err != nil {
			t.Fatal(err)
		}
		pending := 0
		for i, res := range rs {
			switch {
			case res == nil || !res.State.Final():
				pending++
			case res.State != stemtype.StateSucceeded:
				t.Fatalf("task %s ended %s: %+v", ids[i], res.State, res.Error)
			}
		}
		if pending == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("%d of %d tasks not final", pending, tasks)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, c := range children[1:] {
		if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := c.cmd.Wait(); err != nil {
			t.Errorf("worker %d: %v; output: %s", c.cmd.Process.Pid, err, c.out)
		}
	}

	// Runs per task, by process.
	runs := map[string][]string{}
	for _, c := range children {
		f, err := os.Open(c.runlog)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			id, pid, _ := strings.Cut(sc.Text(), " ")
			runs[id] = append(runs[id], pid)
		}
		_ = f.Close()
	}
	again := 0
	for _, id := range ids {
		pids := runs[id]
		if len(pids) == 0 {
			t.Errorf("task %s is final but never ran", id)
		}
		if len(pids) < 2 {
			continue
		}
		again++
		inVictim := 0
		for _, p := range pids {
			if p == victimPID {
				inVictim++
			}
		}
		if inVictim == 0 || len(pids)-inVictim > 1 {
			t.Errorf("task %s ran %d times (pids %v), not only because the killed worker %s had it in flight",
				id, len(pids), pids, victimPID)
		}
	}
	locked := regexp.MustCompile(`(?i)database is locked|SQLITE_BUSY|database table is locked`)
	for _, c := range children {
		if out := c.out.String(); locked.MatchString(out) {
			t.Errorf("worker %d reported a locked database:\n%s", c.cmd.Process.Pid, out)
		}
	}
	t.Logf("%d tasks, %d run again after the kill (in flight in worker %s, which ran %d)",
		tasks, again, victimPID, lines(t, victim.runlog))
}

// lines counts the lines of a file, 0 when it does not exist yet.
func lines(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) {
			return 0
		}
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}
