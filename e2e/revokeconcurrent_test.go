package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemurl"
)

// TestConcurrentCLIRevokesKeepEveryRecord runs two `stem worker revoke`
// processes at once, each revoking 1,000 tasks of its own (--task repeated,
// as the CLI contract has it), against every revoke store kind: the file
// beside Redis, Redis, SQLite and Postgres. No worker runs, so each exits 70
// once its records are stored; the store must then hold all 2,000 records,
// one per task.
func TestConcurrentCLIRevokesKeepEveryRecord(t *testing.T) {
	t.Parallel()
	storeKinds(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		const perCLI = 1000
		type proc struct {
			cmd            *exec.Cmd
			stdout, stderr bytes.Buffer
		}
		procs := make([]*proc, 2)
		want := map[string]bool{}
		for p := range procs {
			args := []string{"worker", "revoke", "--reason", "concurrent", "--requester", fmt.Sprintf("cli%d", p), "--timeout", "200ms"}
			for i := range perCLI {
				id := fmt.Sprintf("%s-cli%d-%04d", c.ns, p, i)
				want[id] = true
				args = append(args, "--task", id)
			}
			pr := &proc{cmd: exec.CommandContext(t.Context(), stemBin, args...)}
			pr.cmd.Env = environ(c.vars)
			pr.cmd.Stdout, pr.cmd.Stderr = &pr.stdout, &pr.stderr
			procs[p] = pr
		}
		// Both start before either is waited for, so their writes overlap.
		for _, pr := range procs {
			if err := pr.cmd.Start(); err != nil {
				t.Fatal(err)
			}
		}
		for p, pr := range procs {
			err := pr.cmd.Wait()
			var ee *exec.ExitError
			// 70: stored, but no worker replied (none runs).
			if !errors.As(err, &ee) || ee.ExitCode() != 70 || !strings.Contains(pr.stdout.String(), "revoke stored") {
				t.Errorf("revoke process %d: %v, want exit 70 after storing\nstdout:\n%.2000s\nstderr:\n%.2000s", p, err, pr.stdout.String(), pr.stderr.String())
			}
			if strings.Contains(pr.stderr.String(), "DATA RACE") {
				t.Errorf("race detected in revoke process %d:\n%s", p, pr.stderr.String())
			}
		}

		url := c.url
		if store.file {
			url = c.vars["STEM_REVOKE_STORE_URL"]
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		rs, err := stemurl.New().OpenRevokes(ctx, url, stemdriver.Options{Namespace: c.ns, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		recs, err := rs.List(ctx, c.ns)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, r := range recs {
			if want[r.TaskID] {
				got[r.TaskID] = true
			}
		}
		t.Logf("%s store: %d of %d records kept", store, len(got), len(want))
		if len(got) != len(want) || len(recs) != len(want) {
			var missing []string
			for id := range want {
				if !got[id] {
					missing = append(missing, id)
				}
			}
			t.Fatalf("%s store holds %d records (%d of the %d revoked tasks); missing %d, e.g. %.10q", store, len(recs), len(got), len(want), len(missing), missing)
		}
	})
}
