package e2e

import (
	"bufio"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var metricsAddrRe = regexp.MustCompile(`msg="serving metrics" addr=(\S+)`)

// scrape returns the samples of a Prometheus text exposition, keyed by
// the series as printed (name{labels}, labels in name order).
func scrape(t *testing.T, base string) map[string]float64 {
	t.Helper()
	body, code := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d\n%s", code, body)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

func get(t *testing.T, url string) (string, int) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), resp.StatusCode
}

// TestWorkerMetrics: `worker start --metrics-addr` serves /healthz, /readyz
// and /metrics, whose counters match the tasks run: by task name and final
// state, run time and queue wait counts, revokes applied and held, control
// commands served.
func TestWorkerMetrics(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		w := c.startWorker("m1", "--metrics-addr", "127.0.0.1:0")
		m := metricsAddrRe.FindStringSubmatch(w.waitLog(t, "serving metrics"))
		if m == nil {
			t.Fatalf("no metrics address in the log:\n%s", w.stderr)
		}
		base := "http://" + m[1]
		if body, code := get(t, base+"/healthz"); code != 200 {
			t.Errorf("/healthz: %d %s", code, body)
		}
		if body, code := get(t, base+"/readyz"); code != 200 { // it answered a ping: started
			t.Errorf("/readyz of a started worker: %d %s", code, body)
		}

		// A revoke of an id not enqueued yet: the task, enqueued with that
		// id, is cancelled when the worker claims it.
		revoked := "metrics-" + randomHex(4)
		c.must("worker", "revoke", "--task", revoked, "--worker", "m1")
		var ids []string
		for range 3 {
			ids = append(ids, c.enqueue("demo.echo", "1"))
		}
		for range 2 {
			ids = append(ids, c.enqueue("demo.fail", "null", "--max-retries", "0"))
		}
		c.enqueue("demo.echo", "null", "--id", revoked)
		for i, id := range ids {
			want := "succeeded"
			if i >= 3 {
				want = "failed"
			}
			c.waitState(id, want)
		}
		c.waitState(revoked, "cancelled")

		want := map[string]float64{
			`stem_tasks_total{state="succeeded",task="demo.echo"}`:      3,
			`stem_tasks_total{state="failed",task="demo.fail"}`:         2,
			`stem_tasks_total{state="cancelled",task="demo.echo"}`:      1,
			`stem_task_run_seconds_count{task="demo.echo"}`:             4,
			`stem_task_run_seconds_count{task="demo.fail"}`:             2,
			`stem_task_queue_wait_seconds_count{queue="default"}`:       6,
			`stem_revokes_applied_total`:                                1,
			`stem_revokes_held`:                                         1,
			`stem_control_commands_total{command="revoke",status="ok"}`: 1,
			`stem_tasks_inflight`:                                       0,
			`stem_tasks_prefetched`:                                     0,
		}
		// A run is counted as it ends, just after its outcome is recorded:
		// poll until the counts arrive.
		deadline := time.Now().Add(waitTimeout)
		for {
			got := scrape(t, base)
			var diff []string
			for k, v := range want {
				if got[k] != v {
					diff = append(diff, k+" = "+strconv.FormatFloat(got[k], 'g', -1, 64)+", want "+strconv.FormatFloat(v, 'g', -1, 64))
				}
			}
			for _, k := range []string{"stem_lease_renewals_total", "stem_lease_losses_total"} {
				if _, ok := got[k]; !ok {
					diff = append(diff, k+" missing")
				}
			}
			if got[`stem_control_commands_total{command="ping",status="ok"}`] < 1 {
				diff = append(diff, "no ping counted (startWorker pinged)")
			}
			if len(diff) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("metrics never matched the tasks run:\n%s", strings.Join(diff, "\n"))
			}
			time.Sleep(pollEvery)
		}

		r := c.run("worker", "start", "--id", "m2", "--metrics-addr", m[1])
		if r.code != 78 || !strings.Contains(r.stderr, "--metrics-addr") {
			t.Errorf("a second worker on the same metrics address: %s", r)
		}
	})
}
