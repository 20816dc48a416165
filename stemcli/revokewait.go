package stemcli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// Outcomes of `revoke --wait`, per task.
const (
	// outcomeTerminated: a worker ran the task when the revoke reached
	// it, and it has stopped since (cancelled by --terminate, or ended).
	outcomeTerminated = "terminated"
	// outcomeStillRunning: still running when the wait timed out.
	outcomeStillRunning = "still-running"
	// outcomeNotRunning: no worker that replied ran the task; it will
	// not start (the revoke is stored).
	outcomeNotRunning = "not-running"
	// outcomeUnknown: no worker ran it and the result backend does not
	// know the id.
	outcomeUnknown = "unknown"
)

// waitPoll is the pause between two inspect rounds of `revoke --wait`.
const waitPoll = 200 * time.Millisecond

// revokeWait is the state of `revoke --wait`: which worker held each task
// when the revoke reached it, and each task's outcome.
type revokeWait struct {
	ids      []string
	holder   map[string]string // task id -> worker that ran it at the revoke
	outcome  map[string]string
	progress io.Writer // nil unless stderr is a terminal
}

// newRevokeWait reads from res which tasks were running where.
func newRevokeWait(res *stem.RevokeResult, ids []string) *revokeWait {
	rw := &revokeWait{ids: ids, holder: map[string]string{}, outcome: map[string]string{}}
	for _, rep := range stem.Decode[stemtype.RevokeReply](res.Replies) {
		if rep.Err != nil {
			continue
		}
		for _, id := range slices.Concat(rep.Payload.Held, rep.Payload.Inflight) {
			rw.holder[id] = rep.WorkerID
		}
	}
	for _, id := range ids {
		switch {
		case rw.holder[id] != "":
		case slices.Contains(res.Unknown, id):
			rw.outcome[id] = outcomeUnknown
		default:
			rw.outcome[id] = outcomeNotRunning
		}
	}
	return rw
}

// pending returns the workers still to ask, and the tasks they ran that
// have no outcome yet.
func (rw *revokeWait) pending() (workers []string, tasks int) {
	for _, id := range rw.ids {
		if _, done := rw.outcome[id]; !done {
			tasks++
			if w := rw.holder[id]; !slices.Contains(workers, w) {
				workers = append(workers, w)
			}
		}
	}
	slices.Sort(workers)
	return workers, tasks
}

// run asks the holders, every waitPoll until timeout, whether they still
// run their tasks, and gives each task that stopped its outcome; those
// still running at the end are still-running. A holder that is no longer
// live runs nothing.
func (rw *revokeWait) run(ctx context.Context, ctl *stem.Controller, timeout, replyTimeout time.Duration) error {
	start := time.Now()
	deadline := start.Add(timeout)
	total := len(rw.holder)
	for {
		workers, left := rw.pending()
		rw.showProgress(total-left, total, time.Since(start))
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			for _, id := range rw.ids {
				if _, done := rw.outcome[id]; !done {
					rw.outcome[id] = outcomeStillRunning
				}
			}
			break
		}
		r, err := ctl.Inspect(ctx, stem.Target{Workers: workers, Timeout: replyTimeout}, stemtype.InspectRequest{})
		if err != nil {
			rw.endProgress()
			return sendErr(err)
		}
		running := map[string]bool{} // worker + "\x00" + task id
		answered := map[string]bool{}
		for _, rep := range stem.Decode[stemtype.InspectReply](r) {
			if rep.Err != nil {
				continue
			}
			answered[rep.WorkerID] = true
			for _, t := range rep.Payload.Active {
				running[rep.WorkerID+"\x00"+t.ID] = true
			}
		}
		for _, id := range rw.ids {
			w := rw.holder[id]
			if _, done := rw.outcome[id]; done || w == "" {
				continue
			}
			if (answered[w] && !running[w+"\x00"+id]) || slices.Contains(r.NotLive, w) {
				rw.outcome[id] = outcomeTerminated
			}
		}
		if _, left := rw.pending(); left > 0 {
			select {
			case <-ctx.Done():
				rw.endProgress()
				return ctx.Err()
			case <-time.After(min(waitPoll, max(time.Until(deadline), 0))):
			}
		}
	}
	rw.endProgress()
	return nil
}

func (rw *revokeWait) showProgress(stopped, total int, elapsed time.Duration) {
	if rw.progress == nil || total == 0 {
		return
	}
	fmt.Fprintf(rw.progress, "\rwaiting for running tasks to stop: %d of %d stopped (%s)\x1b[K", stopped, total, elapsed.Round(time.Second/10))
}

func (rw *revokeWait) endProgress() {
	if rw.progress != nil && len(rw.holder) > 0 {
		fmt.Fprintln(rw.progress)
	}
}

// still returns the tasks still running.
func (rw *revokeWait) still() []string {
	var out []string
	for _, id := range rw.ids {
		if rw.outcome[id] == outcomeStillRunning {
			out = append(out, id)
		}
	}
	return out
}

func (rw *revokeWait) render(w io.Writer) {
	fmt.Fprintln(w)
	tw := table(w)
	fmt.Fprintln(tw, "TASK\tOUTCOME\tWORKER")
	for _, id := range rw.ids {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", id, rw.outcome[id], dash(rw.holder[id]))
	}
	tw.Flush()
}

// withOutcomes adds "outcomes" (task id -> outcome, every task of the
// revoke) to each ok reply's payload of the --json document, as "unknown"
// is added.
func (rw *revokeWait) withOutcomes(reps []stemtype.ControlReply) []stemtype.ControlReply {
	raw, _ := json.Marshal(rw.outcome)
	out := make([]stemtype.ControlReply, len(reps))
	for i, rep := range reps {
		out[i] = rep
		if rep.Status == stemtype.ReplyOK {
			out[i].Payload = appendField(rep.Payload, "outcomes", raw)
		}
	}
	return out
}

// isTerminal reports whether w is a terminal, for progress lines.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0 && !strings.EqualFold(os.Getenv("TERM"), "dumb")
}
