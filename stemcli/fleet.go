package stemcli

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
	"github.com/stem-go/stem/stemurl"
)

// defaultPresenceInterval is the announcement interval assumed for a
// worker that does not announce its own (one that predates IntervalMs):
// stem.WorkerConfig's default.
const defaultPresenceInterval = 5 * time.Second

// workerStatusJSON is one element of `worker status --json`.
type workerStatusJSON struct {
	ID          string    `json:"id"`
	Host        string    `json:"host"`
	PID         int       `json:"pid"`
	Namespace   string    `json:"namespace"`
	Queues      []string  `json:"queues"`
	Concurrency int       `json:"concurrency"`
	Inflight    int       `json:"inflight"`
	Prefetched  int       `json:"prefetched"`
	StartedAt   time.Time `json:"startedAt"`
	LastSeen    time.Time `json:"lastHeartbeatAt"`
	SinceMs     int64     `json:"lastHeartbeatAgoMs"`
	Late        bool      `json:"late"`
	Version     string    `json:"version"`
	// Paused are the worker's queues paused when it last announced
	// itself ([] when none).
	Paused []string `json:"paused"`
}

// fleetStatus returns the --json rows of `worker status` for the live
// workers ws as of now, by worker id. A worker is late when its last
// announcement is older than two of its announcement intervals: it is
// still listed (its presence has not expired), but it may be stalled, cut
// off or dead.
func fleetStatus(ws []stemtype.WorkerInfo, now time.Time) []workerStatusJSON {
	out := make([]workerStatusJSON, 0, len(ws))
	for _, w := range ws {
		every := time.Duration(w.IntervalMs) * time.Millisecond
		if every <= 0 {
			every = defaultPresenceInterval
		}
		since := max(now.Sub(w.LastSeen), 0)
		queues := w.Queues
		if queues == nil {
			queues = []string{}
		}
		paused := w.Paused
		if paused == nil {
			paused = []string{}
		}
		out = append(out, workerStatusJSON{ID: w.ID, Host: w.Host, PID: w.PID, Namespace: w.Namespace,
			Queues: queues, Concurrency: w.Concurrency, Inflight: w.Inflight, Prefetched: w.Prefetched,
			StartedAt: w.StartedAt.UTC(), LastSeen: w.LastSeen.UTC(), SinceMs: since.Milliseconds(),
			Late: since > 2*every, Version: w.Version, Paused: paused})
	}
	slices.SortFunc(out, func(a, b workerStatusJSON) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func renderFleet(w io.Writer, rows []workerStatusJSON, ns string) {
	tw := table(w)
	fmt.Fprintln(tw, "WORKER\tHOST\tPID\tQUEUES\tINFLIGHT\tPREFETCHED\tLAST HEARTBEAT\tVERSION\tSTATE")
	late := 0
	for _, r := range rows {
		state := "ok"
		if r.Late {
			state, late = "late", late+1
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d/%d\t%d\t%s ago\t%s\t%s\n", r.ID, r.Host, r.PID, dash(markPaused(r.Queues, r.Paused)),
			r.Inflight, r.Concurrency, r.Prefetched, (time.Duration(r.SinceMs) * time.Millisecond).Round(time.Second/10),
			dash(r.Version), state)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d worker(s) live in namespace %s", len(rows), ns)
	if late > 0 {
		fmt.Fprintf(w, ", %d late (no heartbeat for over two intervals)", late)
	}
	fmt.Fprintln(w)
}

// markPaused joins queues with commas, each paused one followed by
// "(paused)".
func markPaused(queues, paused []string) string {
	out := make([]string, len(queues))
	for i, q := range queues {
		out[i] = q
		if slices.Contains(paused, q) {
			out[i] += "(paused)"
		}
	}
	return strings.Join(out, ",")
}

// fleetCmd is `worker status`: the live workers from their presence
// announcements, without a broadcast.
func (a *app) fleetCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "status",
		Short: "List the live workers from their heartbeats, without a broadcast",
		Long: `List the live workers of the namespace as their presence heartbeats
announce them: id, host, pid, queues (a paused one marked "(paused)", JSON
"paused"), tasks running out of the concurrency,
tasks prefetched, how long ago the last heartbeat came, and the stem version
the worker was built with. No command is sent, so a busy or stuck worker
is listed all the same; one whose last heartbeat is older than two
heartbeat intervals is marked late (it may be stalled, cut off or dead; it
leaves the list once its presence expires, three intervals after it was
last seen). The counts are as of the last heartbeat.

Exit 0 when the store answered, with or without live workers (see 'stem
worker ping' to require an answer); 69 when it cannot be reached.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			o, err := a.open(ctx, stemurl.RoleControl, a.driverOpts())
			if err != nil {
				return err
			}
			defer a.closeStores(o)
			a.warnMemory(o.URLs.Broker)
			ws, err := o.Control.Workers(ctx)
			if err != nil {
				return &ExitError{Code: ExitUnavailable, Err: fmt.Errorf("list live workers: %w", err)}
			}
			rows := fleetStatus(ws, time.Now())
			if asJSON {
				return writeJSON(a.out, rows)
			}
			renderFleet(a.out, rows, a.namespace())
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, `print a list of {"id","host","pid","namespace","queues","concurrency","inflight","prefetched","startedAt","lastHeartbeatAt","lastHeartbeatAgoMs","late","version"}`)
	return c
}

// whereHolder is a worker that holds a task, in `task where --json`.
type whereHolder struct {
	Worker string `json:"worker"`
	// State is "running" or "reserved" (claimed, waiting for a slot).
	State   string `json:"state"`
	Attempt int    `json:"attempt"`
}

// whereJSON is the --json shape of `task where`.
type whereJSON struct {
	ID      string        `json:"id"`
	Holders []whereHolder `json:"holders"`
	// State is the task's recorded state, "" when none is recorded or no
	// result backend could be asked.
	State stemtype.State `json:"state"`
}

// whereCmd is `task where ID`: which live worker holds a task, from an
// inspect broadcast that includes the reserved tasks.
func (a *app) whereCmd() *cobra.Command {
	f := &controlFlags{}
	c := &cobra.Command{
		Use:   "where ID",
		Short: "Say which worker holds a task (running or reserved)",
		Long: `Ask the live workers (an inspect broadcast, or the --worker ones) which of
them holds the task: running it, or reserved (claimed, waiting for a free
slot). A task can be held by two workers at once only while a lost lease
is re-claimed. With no holder, the task's recorded state says why (not
started, scheduled, or finished).

Exit 0 when a worker holds the task, 1 when none does, 70 when a live
worker did not answer (it might hold it), 69 when the broker cannot be
reached.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, pos []string) error {
			id := pos[0]
			if strings.TrimSpace(id) == "" {
				return exitf(ExitUsage, "task where: empty task id")
			}
			if err := f.check(); err != nil {
				return err
			}
			ctx := cmd.Context()
			ctl, done, err := a.controller(ctx, false)
			if err != nil {
				return err
			}
			defer done()
			r, err := ctl.Inspect(ctx, f.target(), stemtype.InspectRequest{IncludeReserved: true})
			if err != nil {
				return sendErr(err)
			}
			doc := whereJSON{ID: id, Holders: []whereHolder{}}
			for _, rep := range sorted[stemtype.InspectReply](r) {
				if rep.Err != nil {
					continue
				}
				for _, t := range rep.Payload.Active {
					if t.ID == id {
						doc.Holders = append(doc.Holders, whereHolder{Worker: rep.WorkerID, State: "running", Attempt: t.Attempt})
					}
				}
				for _, t := range rep.Payload.Reserved {
					if t.ID == id {
						doc.Holders = append(doc.Holders, whereHolder{Worker: rep.WorkerID, State: "reserved", Attempt: t.Attempt})
					}
				}
			}
			var recorded *stemtype.TaskResult
			if len(doc.Holders) == 0 {
				recorded = a.recordedState(cmd, id)
				if recorded != nil {
					doc.State = recorded.State
				}
			}
			ferr := a.finish(f, r, unanswered[stemtype.InspectReply](r), func(*stem.Replies) {
				if len(doc.Holders) == 0 {
					return
				}
				tw := table(a.out)
				fmt.Fprintln(tw, "WORKER\tSTATE\tATTEMPT")
				for _, h := range doc.Holders {
					fmt.Fprintf(tw, "%s\t%s\t%d\n", h.Worker, h.State, h.Attempt)
				}
				tw.Flush()
			}, func() any { return doc })
			var ee *ExitError
			if errors.As(ferr, &ee) && ee.Code == ExitSoftware && len(r.Replies) == 0 && len(doc.Holders) == 0 {
				// No worker answered: nobody can hold the task. Say what
				// is recorded, then fail as the broadcast did.
				fmt.Fprintf(a.errw, "stem: task %s is held by no worker: %s\n", id, describeRecorded(recorded))
			}
			if ferr != nil || len(doc.Holders) > 0 {
				return ferr
			}
			return fmt.Errorf("task %s is held by no live worker: %s", id, describeRecorded(recorded))
		},
	}
	f.add(c)
	c.Flags().Lookup("json").Usage = `print {"id","holders":[{"worker","state","attempt"}],"state"}`
	return c
}

// recordedState returns the task's recorded result, or nil when none is
// recorded or the result backend cannot be asked (not worth failing for:
// the workers answered the question).
func (a *app) recordedState(cmd *cobra.Command, id string) *stemtype.TaskResult {
	ctx := cmd.Context()
	o, err := a.open(ctx, stemurl.RoleResults, a.driverOpts())
	if err != nil {
		return nil
	}
	defer a.closeStores(o)
	r, err := o.Results.Get(ctx, id)
	if err != nil {
		return nil
	}
	return r
}

// describeRecorded says what a task's recorded result tells of a task
// that no worker holds.
func describeRecorded(r *stemtype.TaskResult) string {
	switch {
	case r == nil:
		return "no state recorded (never enqueued here, expired, or the result backend cannot be reached)"
	case r.State.Final():
		return fmt.Sprintf("it ended %s", r.State)
	case r.State == stemtype.StatePending && r.NotBefore.After(time.Now()):
		return fmt.Sprintf("it is %s, scheduled for %s", r.State, r.NotBefore.UTC().Format(time.RFC3339))
	case r.State == stemtype.StatePending:
		return fmt.Sprintf("it is %s (queued, not claimed yet)", r.State)
	default:
		return fmt.Sprintf("its recorded state is %s", r.State)
	}
}
