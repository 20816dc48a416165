package stemcli

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// queueCmd is `stem queue`: pause and resume.
func (a *app) queueCmd() *cobra.Command {
	q := &cobra.Command{Use: "queue", Short: "Pause and resume queues"}
	q.AddCommand(a.pauseCmd(false), a.pauseCmd(true))
	return q
}

func (a *app) pauseCmd(resume bool) *cobra.Command {
	var f controlFlags
	var o stem.QueuePauseOptions
	verb := "pause"
	short := "Stop workers claiming from a queue, durably (its tasks stay queued)"
	if resume {
		verb = "resume"
		short = "Let workers claim from a paused queue again"
	}
	c := &cobra.Command{
		Use:   verb + " QUEUE",
		Short: short,
		Long: `Pause or resume a queue. pause stores a record in the revoke store (a
record of kind "queue-pause", which never expires) and only then tells the
workers, which stop claiming from the queue; resume stores a newer record
that lifts it. Workers that miss the message, or start later, learn of it
from the store (at start-up and every --revoke-sync). A paused queue's
tasks stay queued, and tasks a worker already claimed run. Paused queues
show in "worker stats" (JSON "paused") and "worker status".

If the store cannot be written, nothing is published and the exit code is
69. With no live worker the record is stored all the same, and the exit
code is 70, as for every worker command. With --json the document is the
list of worker replies, each payload {"queue","paused","consumes",
"pausedQueues"}.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, pos []string) error {
			o.Queue = pos[0]
			if strings.TrimSpace(o.Queue) == "" {
				return exitf(ExitUsage, "queue %s: empty queue name", verb)
			}
			if err := f.check(); err != nil {
				return err
			}
			ctl, done, err := a.controller(cmd.Context(), true)
			if err != nil {
				return err
			}
			defer done()
			set := ctl.PauseQueue
			if resume {
				set = ctl.ResumeQueue
			}
			res, err := set(cmd.Context(), f.target(), o)
			switch {
			case errors.Is(err, stem.ErrStoreUnavailable):
				return storeErr(err)
			case err != nil:
				return sendErr(err)
			}
			if len(res.Replies.Replies) == 0 && !f.json {
				fmt.Fprintf(a.out, "%s of queue %s stored; workers that start later will honour it\n", verb, o.Queue)
			}
			return a.finish(&f, res.Replies, unanswered[stemtype.QueuePauseReply](res.Replies),
				func(r *stem.Replies) { renderPause(a.out, verb, res.Record, r) }, nil)
		},
	}
	f.add(c)
	c.Flags().StringVar(&o.Reason, "reason", "", "why, recorded with the "+verb)
	c.Flags().StringVar(&o.RequestedBy, "requester", "stem-cli", "who, recorded with the "+verb)
	return c
}

func renderPause(w io.Writer, verb string, rec stemtype.RevokeRecord, r *stem.Replies) {
	state := "paused"
	if rec.Resumed {
		state = "resumed"
	}
	fmt.Fprintf(w, "queue %s %s in namespace %s\n", rec.Queue, state, rec.Namespace)
	if len(r.Replies) == 0 {
		return
	}
	tw := table(w)
	fmt.Fprintln(tw, "WORKER\tSTATUS\tCONSUMES\tPAUSED QUEUES")
	for _, rep := range sorted[stemtype.QueuePauseReply](r) {
		if rep.Err != nil {
			fmt.Fprintf(tw, "%s\terror: %s\n", rep.WorkerID, rep.Err)
			continue
		}
		p := rep.Payload
		consumes := "no"
		if p.Consumes {
			consumes = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", rep.WorkerID, rep.Status, consumes, dash(strings.Join(p.PausedQueues, ",")))
	}
	tw.Flush()
}
