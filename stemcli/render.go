package stemcli

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

// sorted returns the replies with their payloads decoded as P, ordered by
// worker id for stable output. A payload that does not decode is that
// worker's error (stem.Decode).
func sorted[P any](r *stem.Replies) []stem.WorkerReply[P] {
	out := stem.Decode[P](r)
	sort.SliceStable(out, func(i, j int) bool { return out[i].WorkerID < out[j].WorkerID })
	return out
}

func renderPing(w io.Writer, r *stem.Replies, start time.Time) {
	tw := table(w)
	fmt.Fprintln(tw, "WORKER\tSTATUS\tTIMESTAMP")
	for _, rep := range sorted[stemtype.PingReply](r) {
		ts := "-"
		if !rep.Payload.Timestamp.IsZero() {
			ts = rep.Payload.Timestamp.Format(time.RFC3339Nano)
		}
		if rep.Err != nil {
			ts = rep.Err.Error()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", rep.WorkerID, rep.Status, ts)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d worker(s) replied in %s\n", len(r.Replies), time.Since(start).Round(10*time.Microsecond))
}

func renderInspect(w io.Writer, r *stem.Replies, req stemtype.InspectRequest) {
	for _, rep := range sorted[stemtype.InspectReply](r) {
		if rep.Err != nil {
			fmt.Fprintf(w, "worker %s: error: %s\n", rep.WorkerID, rep.Err)
			continue
		}
		p := rep.Payload
		total := max(p.RevokedTotal, len(p.Revoked))
		fmt.Fprintf(w, "worker %s: %d in flight, %d revoked", rep.WorkerID, p.Inflight, total)
		if req.IncludeRevoked && len(p.Revoked) < total {
			fmt.Fprintf(w, " (listing the newest %d; --limit 0 lists all)", len(p.Revoked))
		}
		if req.IncludeReserved {
			if p.Reserved == nil {
				fmt.Fprint(w, ", reserved tasks not reported (an older worker)")
			} else {
				fmt.Fprintf(w, ", %d reserved", len(p.Reserved))
			}
		}
		if req.IncludeScheduled {
			switch {
			case p.Scheduled == nil:
				fmt.Fprint(w, ", scheduled tasks not reported (the broker cannot list them, or an older worker)")
			case int64(len(p.Scheduled)) < p.ScheduledTotal:
				fmt.Fprintf(w, ", %d scheduled (listing the soonest %d per queue)", p.ScheduledTotal, cmp.Or(req.ScheduledLimit, stemtype.DefaultScheduledLimit))
			default:
				fmt.Fprintf(w, ", %d scheduled", p.ScheduledTotal)
			}
		}
		fmt.Fprintln(w)
		withRevoked := req.IncludeRevoked
		if len(p.Active) > 0 {
			tw := table(w)
			fmt.Fprintln(tw, "  ID\tTASK\tQUEUE\tATTEMPT\tRUNTIME\tISOLATED\tPROGRESS\tLAST HEARTBEAT\tTERMINATING")
			for _, t := range p.Active {
				prog, hb := "-", "-"
				if t.Progress != nil {
					prog = fmt.Sprintf("%.0f%%", t.Progress.Percent)
				}
				if !t.LastHeartbeatAt.IsZero() {
					hb = t.LastHeartbeatAt.Format(time.RFC3339Nano)
				}
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\t%t\t%s\t%s\t%t\n", t.ID, t.Task, t.Queue, t.Attempt,
					(time.Duration(t.RuntimeMs) * time.Millisecond).String(), t.Isolated, prog, hb, t.Terminating)
			}
			tw.Flush()
		}
		if len(p.Reserved) > 0 {
			tw := table(w)
			fmt.Fprintln(tw, "  RESERVED\tTASK\tQUEUE\tATTEMPT\tWAITED")
			for _, t := range p.Reserved {
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\n", t.ID, t.Task, t.Queue, t.Attempt,
					(time.Duration(t.WaitedMs) * time.Millisecond).String())
			}
			tw.Flush()
		}
		if len(p.Scheduled) > 0 {
			tw := table(w)
			fmt.Fprintln(tw, "  SCHEDULED\tTASK\tQUEUE\tATTEMPT\tNOT BEFORE")
			for _, t := range p.Scheduled {
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\n", t.ID, t.Task, t.Queue, t.Attempt, t.NotBefore.Format(time.RFC3339))
			}
			tw.Flush()
		}
		if withRevoked && len(p.Revoked) > 0 {
			tw := table(w)
			fmt.Fprintln(tw, "  REVOKED\tTERMINATE\tREQUESTED BY\tREASON\tEXPIRES")
			// Newest first, as workers send them.
			sort.SliceStable(p.Revoked, func(i, j int) bool { return p.Revoked[i].Version > p.Revoked[j].Version })
			for _, rec := range p.Revoked {
				exp := "never"
				if !rec.ExpiresAt.IsZero() {
					exp = rec.ExpiresAt.Format(time.RFC3339)
				}
				what := rec.Target() // a task id, "name TASK" or "queue Q"
				if rec.Resumed {
					what += " (resumed)"
				}
				fmt.Fprintf(tw, "  %s\t%t\t%s\t%s\t%s\n", what, rec.Terminate, dash(rec.RequestedBy), dash(rec.Reason), exp)
			}
			tw.Flush()
		}
	}
}

func renderShutdown(w io.Writer, r *stem.Replies) {
	tw := table(w)
	fmt.Fprintln(tw, "WORKER\tSTATUS\tMODE\tINFLIGHT")
	n := 0
	for _, rep := range sorted[stemtype.ShutdownReply](r) {
		if rep.Err != nil {
			fmt.Fprintf(tw, "%s\terror: %s\n", rep.WorkerID, rep.Err)
			continue
		}
		n++
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", rep.WorkerID, rep.Status, rep.Payload.Mode, rep.Payload.Inflight)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d worker(s) shutting down\n", n)
}

func renderStats(w io.Writer, r *stem.Replies) {
	tw := table(w)
	fmt.Fprintln(tw, "WORKER\tHOST\tPID\tINFLIGHT\tPROCESSED\tSUCCEEDED\tFAILED\tRETRIED\tCANCELLED\tUPTIME\tQUEUES")
	for _, rep := range sorted[stemtype.StatsReply](r) {
		if rep.Err != nil {
			fmt.Fprintf(tw, "%s\terror: %s\n", rep.WorkerID, rep.Err)
			continue
		}
		s := rep.Payload
		qs := make([]string, 0, len(s.Queues))
		for q, n := range s.Queues {
			mark := ""
			if slices.Contains(s.Paused, q) {
				mark = "(paused)"
			}
			qs = append(qs, fmt.Sprintf("%s=%d%s", q, n, mark))
		}
		sort.Strings(qs)
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d/%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", rep.WorkerID, s.Host, s.PID, s.Inflight, s.Concurrency,
			s.Processed, s.Succeeded, s.Failed, s.Retried, s.Cancelled,
			(time.Duration(s.UptimeMs) * time.Millisecond).Round(time.Second/10).String(), strings.Join(qs, ","))
	}
	tw.Flush()
	renderStores(w, r)
}

// renderStores prints the stores each worker reports (redacted URLs), as
// a second table, when any worker reports them.
func renderStores(w io.Writer, r *stem.Replies) {
	var rows []string
	for _, rep := range sorted[stemtype.StatsReply](r) {
		s := rep.Payload
		if rep.Err != nil || s.Stores == nil {
			continue
		}
		rows = append(rows, fmt.Sprintf("%s\t%s\t%s\t%s\t%s\n", rep.WorkerID, s.Stores.Broker, s.Stores.Results, s.Stores.Revokes, s.Stores.Control))
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := table(w)
	fmt.Fprintln(tw, "WORKER\tBROKER\tRESULTS\tREVOKES\tCONTROL")
	for _, row := range rows {
		fmt.Fprint(tw, row)
	}
	tw.Flush()
}

// revokeDoc is the --json output of revoke: the list of replies, as every
// worker command prints it (DESIGN §5). Each reply's payload is the worker's
// revoke reply (tasks, inflight, ignored, expired) plus "unknown": the ids
// the result backend holds no result of, [] when it knows them all, and
// absent when no result backend could be asked.
func revokeDoc(res *stem.RevokeResult) []stemtype.ControlReply {
	reps := replyList(res.Replies)
	if !res.Checked {
		return reps
	}
	unknown, _ := json.Marshal(res.Unknown)
	if res.Unknown == nil {
		unknown = []byte("[]")
	}
	out := make([]stemtype.ControlReply, len(reps))
	for i, rep := range reps {
		out[i] = rep
		if rep.Status == stemtype.ReplyOK {
			out[i].Payload = appendField(rep.Payload, "unknown", unknown)
		}
	}
	return out
}

// appendField returns the JSON object payload with the field key set to
// value appended, keeping its fields and their order; a payload that is
// not an object is returned as the worker sent it.
func appendField(payload json.RawMessage, key string, value []byte) json.RawMessage {
	b := bytes.TrimSpace(payload)
	if len(b) < 2 || b[0] != '{' || !json.Valid(b) {
		return payload
	}
	body := bytes.TrimSpace(b[1 : len(b)-1])
	p := append([]byte{'{'}, body...)
	if len(body) > 0 {
		p = append(p, ',')
	}
	k, _ := json.Marshal(key)
	p = append(append(append(append(p, k...), ':'), value...), '}')
	return p
}

func renderRevoke(w io.Writer, res *stem.RevokeResult) {
	recs, r := res.Records, res.Replies
	var byID, byName []stemtype.RevokeRecord
	for _, rec := range recs {
		if rec.Kind == stemtype.RevokeKindName {
			byName = append(byName, rec)
		} else {
			byID = append(byID, rec)
		}
	}
	if len(recs) > 0 {
		mode := "revoked"
		if recs[0].Terminate {
			mode = "revoked (terminate)"
		}
		what := fmt.Sprintf("%d task(s)", len(byID))
		switch {
		case len(byID) == 0:
			what = fmt.Sprintf("every task of %d name(s)", len(byName))
		case len(byName) > 0:
			what += fmt.Sprintf(" and every task of %d name(s)", len(byName))
		}
		fmt.Fprintf(w, "%s %s in namespace %s until %s\n", mode, what, recs[0].Namespace,
			recs[0].ExpiresAt.Format(time.RFC3339))
	}
	if len(byName) > 0 {
		tw := table(w)
		fmt.Fprintln(tw, "TASK NAME")
		for _, rec := range byName {
			fmt.Fprintln(tw, rec.Name)
		}
		tw.Flush()
	}
	if len(byID) > 0 {
		unknown := make(map[string]bool, len(res.Unknown))
		for _, id := range res.Unknown {
			unknown[id] = true
		}
		tw := table(w)
		fmt.Fprintln(tw, "TASK\tRESULT BACKEND")
		for _, rec := range byID {
			known := "not checked"
			switch {
			case unknown[rec.TaskID]:
				known = "unknown"
			case res.Checked:
				known = "known"
			}
			fmt.Fprintf(tw, "%s\t%s\n", rec.TaskID, known)
		}
		tw.Flush()
	}
	if len(r.Replies) == 0 {
		return
	}
	tw := table(w)
	fmt.Fprintln(tw, "WORKER\tSTATUS\tAPPLIED\tSIGNALLED\tIGNORED\tEXPIRED")
	for _, rep := range sorted[stemtype.RevokeReply](r) {
		if rep.Err != nil {
			fmt.Fprintf(tw, "%s\terror: %s\n", rep.WorkerID, rep.Err)
			continue
		}
		p := rep.Payload
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%d\n", rep.WorkerID, rep.Status, len(p.Tasks)+len(p.Names), dash(strings.Join(p.Inflight, ",")), len(p.Ignored), len(p.Expired))
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
