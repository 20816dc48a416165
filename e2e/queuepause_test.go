package e2e

import (
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/stem-go/stem/stemtype"
)

// pausedInStatus returns the paused queues `worker status --json` shows
// for worker id.
func (c *cluster) pausedInStatus(id string) []string {
	c.t.Helper()
	var rows []struct {
		ID     string   `json:"id"`
		Paused []string `json:"paused"`
	}
	decodeOne(c.t, c.must("worker", "status", "--json"), &rows)
	for _, r := range rows {
		if r.ID == id {
			return r.Paused
		}
	}
	c.t.Fatalf("worker status does not list %s: %+v", id, rows)
	return nil
}

// TestQueuePauseResume: `stem queue pause Q` stops the workers claiming
// from Q, durably (a worker started later honours it), shown in stats and
// status, while Q's tasks stay queued; `stem queue resume Q` lets them run.
func TestQueuePauseResume(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		w1 := c.startWorker("w1", "--queue", "mail", "--queue", "default")
		r := c.run("queue", "pause", "mail", "--reason", "smtp down", "--worker", "w1", "--json")
		if r.code != 0 {
			t.Fatalf("queue pause: %s", r)
		}
		var reps []stemtype.ControlReply
		decodeOne(t, r.stdout, &reps)
		var p stemtype.QueuePauseReply
		decodeOne(t, string(only(t, reps, "w1").Payload), &p)
		if p.Queue != "mail" || !p.Paused || !p.Consumes || !slices.Equal(p.PausedQueues, []string{"mail"}) {
			t.Errorf("pause reply = %s", mustJSON(p))
		}
		if got := keysOf(t, only(t, reps, "w1").Payload); !slices.Equal(got, []string{"consumes", "paused", "pausedQueues", "queue"}) {
			t.Errorf("pause reply keys = %v", got)
		}
		held := c.enqueue("demo.echo", `{"m":1}`, "--queue", "mail")
		c.waitState(c.enqueue("demo.echo", `{"d":1}`), "succeeded")
		st := c.waitStats("w1", "the paused queue's depth", func(s stemtype.StatsReply) bool { return s.Queues["mail"] == 1 })
		if !slices.Equal(st.Paused, []string{"mail"}) {
			t.Errorf("stats paused = %v, want [mail]", st.Paused)
		}
		if got := c.pausedInStatus("w1"); !slices.Equal(got, []string{"mail"}) {
			t.Errorf("worker status paused = %v, want [mail]", got)
		}
		if out := c.must("worker", "status"); !strings.Contains(out, "mail(paused)") {
			t.Errorf("worker status does not mark mail paused:\n%s", out)
		}

		// A worker that starts after the pause honours it.
		if err := w1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := w1.wait(t); code != 0 {
			t.Fatalf("w1 exit %d", code)
		}
		c.startWorker("w2", "--queue", "mail", "--queue", "default")
		c.waitState(c.enqueue("demo.echo", `{"d":2}`), "succeeded")
		if s := c.status(held); s.State != "pending" {
			t.Errorf("the paused queue's task = %+v, want pending", s)
		}
		if st := c.stats("w2"); !slices.Equal(st.Paused, []string{"mail"}) || st.Queues["mail"] != 1 {
			t.Errorf("stats of the later worker = %s, want mail paused with one task", mustJSON(st))
		}

		r = c.run("queue", "resume", "mail", "--worker", "w2")
		if r.code != 0 || !strings.Contains(r.stdout, "queue mail resumed") {
			t.Fatalf("queue resume: %s", r)
		}
		c.waitState(held, "succeeded")
		if st := c.stats("w2"); len(st.Paused) != 0 {
			t.Errorf("stats after the resume = %s", mustJSON(st))
		}

		for _, args := range [][]string{
			{"queue", "pause"},
			{"queue", "pause", ""},
			{"queue", "resume", "a", "b"},
		} {
			if r := c.run(args...); r.code != 64 {
				t.Errorf("%q: want exit 64, got %s", args, r)
			}
		}
	})
}
