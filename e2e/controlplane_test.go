package e2e

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
	"github.com/stem-go/stem/stemurl"
)

// TestCommandToWorkerNotLiveFailsFast: a command to a worker that is not
// live, or a broadcast with no live worker, exits 70 at once saying so,
// without the --timeout that would otherwise be waited out (the default
// 5s here; the test asserts the message, not the time).
func TestCommandToWorkerNotLiveFailsFast(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		r := c.run("worker", "ping", "--worker", "ghost")
		if r.code != 70 || !strings.Contains(r.stderr, "worker ghost is not live") || !strings.Contains(r.stderr, "no worker replied") {
			t.Errorf("ping of a worker that is not live: want exit 70 saying ghost is not live, got %s", r)
		}
		for _, cmd := range [][]string{{"worker", "ping"}, {"worker", "stats"}, {"worker", "inspect"}} {
			r = c.run(cmd...)
			if r.code != 70 || !strings.Contains(r.stderr, "no worker is live in namespace "+c.ns) {
				t.Errorf("%v with no live worker: want exit 70 saying no worker is live, got %s", cmd, r)
			}
		}
		// A revoke is stored all the same, and says so.
		r = c.run("worker", "revoke", "--task", "t-"+randomHex(8))
		if r.code != 70 || !strings.Contains(r.stdout, "revoke stored") || !strings.Contains(r.stderr, "no worker is live") {
			t.Errorf("revoke with no live worker: %s", r)
		}
	})
}

// TestBroadcastNamesSilentWorker: a live worker (announced) that does not
// answer a broadcast is named, and the command exits 70, while the replies
// that came are still printed.
func TestBroadcastNamesSilentWorker(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		c.startWorker("w1")

		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		ctl, err := stemurl.New().OpenControl(ctx, c.url, stemdriver.Options{Namespace: c.ns})
		if err != nil {
			t.Fatal(err)
		}
		defer ctl.Close()
		sub, err := ctl.Subscribe(ctx, "silent")
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		if err := ctl.Announce(ctx, stemtype.WorkerInfo{ID: "silent", Namespace: c.ns}, time.Minute); err != nil {
			t.Fatal(err)
		}
		r := c.run("worker", "ping", "--timeout", "1s", "--json")
		if r.code != 70 || !strings.Contains(r.stderr, "worker silent did not reply") || strings.Contains(r.stderr, "w1") {
			t.Errorf("broadcast with a silent live worker: want exit 70 naming only silent, got %s", r)
		}
		var reps []stemtype.ControlReply
		decodeOne(t, r.stdout, &reps)
		if got := workerIDs(reps); !slices.Equal(got, []string{"w1"}) {
			t.Errorf("replies from %v, want [w1]", got)
		}
		r = c.run("worker", "stats", "--timeout", "1s")
		if r.code != 70 || !strings.Contains(r.stderr, "silent") || !strings.Contains(r.stdout, "w1") {
			t.Errorf("stats with a silent live worker: %s", r)
		}
	})
}

// TestInspectRevokedOnlyWhenAsked: inspect lists revoke records only with
// --include-revoked, then at most --limit of them, the newest first, and
// always says how many the worker holds.
func TestInspectRevokedOnlyWhenAsked(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		c.startWorker("w1")
		ids := []string{"a-" + randomHex(6), "b-" + randomHex(6), "c-" + randomHex(6)}
		for _, id := range ids { // one call each: increasing versions
			c.must("worker", "revoke", "--task", id, "--worker", "w1")
		}
		inspect := func(args ...string) (stemtype.InspectReply, []string) {
			t.Helper()
			rep := only(t, c.replies(append([]string{"worker", "inspect", "--worker", "w1"}, args...)...), "w1")
			var p stemtype.InspectReply
			decodeOne(t, string(rep.Payload), &p)
			return p, keysOf(t, rep.Payload)
		}
		p, keys := inspect()
		if !slices.Equal(keys, []string{"active", "inflight", "revokedTotal"}) || p.RevokedTotal != 3 {
			t.Errorf("inspect: keys %v, revokedTotal %d; want no revoked list and 3", keys, p.RevokedTotal)
		}
		p, _ = inspect("--include-revoked", "--limit", "2")
		var got []string
		for _, r := range p.Revoked {
			got = append(got, r.TaskID)
		}
		if !slices.Equal(got, []string{ids[2], ids[1]}) || p.RevokedTotal != 3 {
			t.Errorf("inspect --include-revoked --limit 2: %v of %d, want [%s %s] of 3", got, p.RevokedTotal, ids[2], ids[1])
		}
		if p, _ = inspect("--include-revoked"); len(p.Revoked) != 3 {
			t.Errorf("inspect --include-revoked (default limit): %d records, want 3", len(p.Revoked))
		}
		out := c.must("worker", "inspect", "--worker", "w1", "--include-revoked", "--limit", "1")
		if !strings.Contains(out, "3 revoked") || !strings.Contains(out, "newest 1") || !strings.Contains(out, ids[2]) || strings.Contains(out, ids[0]) {
			t.Errorf("human inspect --limit 1 does not show the newest record and the cut:\n%s", out)
		}
		for _, args := range [][]string{{"--limit", "5"}, {"--include-revoked", "--limit", "-1"}} {
			if r := c.run(append([]string{"worker", "inspect", "--worker", "w1"}, args...)...); r.code != 64 {
				t.Errorf("inspect %v: want exit 64, got %s", args, r)
			}
		}
	})
}

// TestRevokeUnknownID: a mistyped (shortened) id is revoked all the same
// but shown as unknown, in the text and in the JSON.
func TestRevokeUnknownID(t *testing.T) {
	t.Parallel()
	c := newCluster(t, redisStore)
	c.startWorker("w1")
	known := c.enqueue("demo.echo", `{}`, "--countdown", "1h")
	typo := known[:8]

	r := c.run("worker", "revoke", "--task", known, "--task", typo, "--worker", "w1")
	if r.code != 0 {
		t.Fatalf("revoke: %s", r)
	}
	var typoLine, knownLine string
	for _, l := range strings.Split(r.stdout, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) > 0 && f[0] == typo:
			typoLine = l
		case len(f) > 0 && f[0] == known:
			knownLine = l
		}
	}
	if !strings.Contains(typoLine, "unknown") || strings.Contains(knownLine, "unknown") || !strings.Contains(r.stderr, typo) {
		t.Errorf("revoke text does not mark only %s unknown: %s", typo, r)
	}

	other := c.enqueue("demo.echo", `{}`, "--countdown", "1h")
	typo2 := "x" + other[1:]
	r = c.run("worker", "revoke", "--task", other, "--task", typo2, "--worker", "w1", "--json")
	if r.code != 0 {
		t.Fatalf("revoke --json: %s", r)
	}
	var reps []stemtype.ControlReply
	decodeOne(t, r.stdout, &reps)
	rep := only(t, reps, "w1")
	var p revokePayload
	decodeOne(t, string(rep.Payload), &p)
	if !slices.Equal(p.Unknown, []string{typo2}) {
		t.Errorf("revoke --json = %s, want a list of replies whose payload says unknown [%s]", r.stdout, typo2)
	}
	if !slices.Contains(p.Tasks, typo2) {
		t.Errorf("the unknown id was not published: %s", mustJSON(p))
	}
	if !hasRecord(c.inspect("w1").Revoked, typo2) {
		t.Errorf("the worker does not hold the revoke of the unknown id")
	}

	// With no result backend to ask, nothing is called unknown.
	r = c.runEnv(map[string]string{"STEM_REVOKE_STORE_URL": c.redis, "STEM_RESULT_BACKEND_URL": deadRedis},
		"worker", "revoke", "--task", typo, "--worker", "w1", "--json")
	if r.code != 0 {
		t.Fatalf("revoke without a reachable result backend: %s", r)
	}
	decodeOne(t, r.stdout, &reps)
	var raw map[string]json.RawMessage
	decodeOne(t, string(only(t, reps, "w1").Payload), &raw)
	if _, ok := raw["unknown"]; ok || !strings.Contains(r.stderr, "stem:") {
		t.Errorf("revoke without a reachable result backend: want no unknown field and a note on stderr, got %s", r)
	}
}
