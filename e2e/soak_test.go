package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
	"github.com/stem-go/stem/stemurl"
)

// envSoak runs TestSoak for the duration it holds (`STEM_SOAK=3m go test
// -run TestSoak ./e2e`); .ci/run sets a short one.
const envSoak = "STEM_SOAK"

// TestSoak is the fault matrix's soak: for STEM_SOAK, a producer enqueues
// on Redis while three worker processes run the tasks, one of them is
// killed with SIGKILL at random moments (and replaced by a new process),
// and tasks are revoked at random, some of them while they run. At the
// end every task is final, and the ledger of executions kept outside
// Redis agrees: each succeeded task ran at least once (lost 0), and a task
// is cancelled only if it was revoked. The random choices come from a seed
// the test logs, so a failing run can be replayed (STEM_SOAK_SEED).
func TestSoak(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv(envSoak))
	if err != nil || d <= 0 {
		t.Skipf("set %s to a duration (e.g. 3m) to run the soak test", envSoak)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("STEM_SOAK_SEED"); s != "" {
		if _, err := fmt.Sscan(s, &seed); err != nil {
			t.Fatalf("STEM_SOAK_SEED=%q: %v", s, err)
		}
	}
	t.Logf("soak for %s, seed %d", d, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))

	c := newCluster(t, redisStore)
	c.bin = ledgerBin
	ledger := filepath.Join(t.TempDir(), "ledger")
	c.vars["LEDGER_FILE"] = ledger
	// A short lease, renewed while tasks run, so that a killed worker's
	// tasks come back within the soak's tail.
	flags := []string{"--lease", "3s", "--concurrency", "4"}
	workers := []*worker{c.startWorker("s1", flags...), c.startWorker("s2", flags...), c.startWorker("s3", flags...)}

	ctx, cancel := context.WithTimeout(context.Background(), d+5*waitTimeout)
	defer cancel()
	o := c.stores(ctx, stemurl.AllRoles)
	client, err := stem.NewClient(stem.ClientConfig{Broker: o.Broker, Results: o.Results, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := stem.NewController(stem.ControllerConfig{Namespace: c.ns, Control: o.Control, Revokes: o.Revokes,
		Results: o.Results, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}

	var all []string
	revoked := map[string]bool{}
	kills, restarts := 0, 0
	end := time.Now().Add(d)
	nextKill := time.Now().Add(time.Duration(500+rng.IntN(2000)) * time.Millisecond)
	for time.Now().Before(end) {
		reqs := make([]stem.EnqueueRequest, 20)
		for i := range reqs {
			reqs[i] = stem.EnqueueRequest{Task: "ledger.append", Args: map[string]int{"ms": rng.IntN(30)}}
		}
		ids, err := client.EnqueueBatch(ctx, reqs)
		if err != nil {
			t.Fatalf("enqueue: %v", err)
		}
		all = append(all, ids...)

		// A revoke now and then, of a task just enqueued (likely queued)
		// or of an older one (likely running or done), with terminate.
		if rng.IntN(4) == 0 {
			id := all[len(all)-1-rng.IntN(min(len(all), 200))]
			if _, err := ctl.Revoke(ctx, stem.Target{Timeout: time.Second},
				stem.RevokeOptions{TaskIDs: []string{id}, Terminate: rng.IntN(2) == 0, Reason: "soak"}); err != nil {
				t.Fatalf("revoke %s: %v", id, err)
			}
			revoked[id] = true
		}
		if time.Now().After(nextKill) {
			i := rng.IntN(len(workers))
			if err := workers[i].cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			workers[i].wait(t)
			kills++
			restarts++
			workers[i] = c.startWorker(fmt.Sprintf("s%d-%d", i+1, restarts), flags...)
			nextKill = time.Now().Add(time.Duration(500+rng.IntN(2000)) * time.Millisecond)
		}
		time.Sleep(20 * time.Millisecond) // the producer's pace, not a synchronisation
	}

	// Every task reaches a final state.
	results := waitAllFinal(t, ctx, o.Results, all)

	runs := readLedger(t, ledger)
	lost, duplicates, cancelled := 0, 0, 0
	for i, id := range all {
		r := results[i]
		n := len(runs[id])
		switch r.State {
		case stemtype.StateSucceeded:
			if n == 0 {
				lost++
				t.Errorf("task %s succeeded but never ran (ledger)", id)
			}
		case stemtype.StateCancelled:
			cancelled++
			if !revoked[id] {
				t.Errorf("task %s cancelled but never revoked: %s", id, mustJSON(r))
			}
		default:
			t.Errorf("task %s ended %s: %s", id, r.State, mustJSON(r))
		}
		if n > 1 {
			duplicates += n - 1
		}
	}
	if kills == 0 {
		t.Errorf("no worker was killed: the soak proved nothing about kills")
	}
	t.Logf("soak %s: %d tasks, %d kills, %d revoked (%d cancelled), lost %d, duplicate runs %d",
		d, len(all), kills, len(revoked), cancelled, lost, duplicates)
}
