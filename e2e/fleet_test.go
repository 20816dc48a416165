package e2e

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemurl"
)

// lockedError matches what a store says when it could not take a lock
// (SQLite's "database is locked", SQLITE_BUSY): none may ever surface.
var lockedError = regexp.MustCompile(`(?i)database is locked|sqlite_busy|\(5\)|\(517\)`)

// TestFleetSurvivesSIGKILL: three worker processes share one store with a
// producer that enqueues while they run, and one worker is killed with
// SIGKILL once a third of the tasks ran. Every task ends succeeded; a task
// runs twice only when the killed worker ran it before its result was
// recorded (in flight at the kill), and never twice elsewhere; no error of
// a lock taken by another process surfaces anywhere. Each execution is
// counted in a ledger file outside the store.
func TestFleetSurvivesSIGKILL(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		const (
			total = 3000
			batch = 100
		)
		c := newCluster(t, store)
		c.bin = ledgerBin
		ledger := filepath.Join(t.TempDir(), "ledger")
		c.vars["LEDGER_FILE"] = ledger
		// A lease long enough to be renewed on a loaded machine, short
		// enough to re-claim the killed worker's tasks soon.
		flags := []string{"--lease", "8s", "--concurrency", "4"}
		victim := c.startWorker("f1", flags...)
		others := []*worker{c.startWorker("f2", flags...), c.startWorker("f3", flags...)}

		ctx, cancel := context.WithTimeout(context.Background(), 3*waitTimeout)
		defer cancel()
		o := c.stores(ctx, stemurl.RoleBroker|stemurl.RoleResults)
		client, err := stem.NewClient(stem.ClientConfig{Broker: o.Broker, Results: o.Results, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		ids := make(chan []string, 1)
		produced := make(chan error, 1)
		go func() { // the producer, enqueueing while the workers run
			var all []string
			for len(all) < total {
				reqs := make([]stem.EnqueueRequest, batch)
				for i := range reqs {
					reqs[i] = stem.EnqueueRequest{Task: "ledger.append", Args: map[string]int{"ms": 5}}
				}
				got, err := client.EnqueueBatch(ctx, reqs)
				if err != nil {
					produced <- err
					return
				}
				all = append(all, got...)
			}
			ids <- all
			produced <- nil
		}()

		waitLedger(t, ledger, total/3)
		if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		victim.wait(t)
		if err := <-produced; err != nil {
			t.Fatalf("producer: %v", err)
		}
		all := <-ids

		// Every task reaches a final state: succeeded.
		waitAllSucceeded(t, ctx, o.Results, all)

		// The ledger: each task ran at least once; twice only when the
		// first run was the killed worker's.
		runs := readLedger(t, ledger)
		pid := strconv.Itoa(victim.cmd.Process.Pid)
		twice, victimRan := 0, 0
		for _, id := range all {
			byVictim, byOthers := 0, 0
			for _, p := range runs[id] {
				if p == pid {
					byVictim++
				} else {
					byOthers++
				}
			}
			switch {
			case byVictim+byOthers == 0:
				t.Errorf("task %s never ran (lost)", id)
			case byOthers > 1 || byVictim > 1:
				t.Errorf("task %s ran %d times on the killed worker and %d on the others", id, byVictim, byOthers)
			case byVictim == 1 && byOthers == 1:
				twice++
			}
			victimRan += byVictim
		}
		if victimRan == 0 {
			t.Errorf("the killed worker ran none of the tasks: the kill did not land midway")
		}
		t.Logf("%s: %d tasks, %d ran twice (in flight on the killed worker)", store, total, twice)
		for _, w := range append(others, victim) {
			if m := lockedError.FindString(w.stderr.String()); m != "" {
				t.Errorf("worker %s logged a lock error (%q):\n%s", w.id, m, w.stderr.String())
			}
		}
	})
}

// waitLedger waits until the ledger holds at least n executions.
func waitLedger(t *testing.T, path string, n int) {
	t.Helper()
	deadline := time.Now().Add(3 * waitTimeout)
	for {
		b, err := os.ReadFile(path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if strings.Count(string(b), "\n") >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the ledger holds %d executions after %s, want %d", strings.Count(string(b), "\n"), 3*waitTimeout, n)
		}
		time.Sleep(pollEvery)
	}
}

// readLedger returns, per task id, the pids of the processes that ran it.
func readLedger(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	runs := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		id, pid, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			t.Fatalf("ledger line %q is not \"ID PID\"", sc.Text())
		}
		runs[id] = append(runs[id], pid)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return runs
}

// quietLogger discards the logs of the stores the test process opens.
func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
