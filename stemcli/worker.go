package stemcli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/isolated"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmetrics"
	"github.com/stem-go/stem/stemtype"
	"github.com/stem-go/stem/stemurl"
)

// controlFlags are the flags every worker control command takes.
type controlFlags struct {
	workers []string
	timeout time.Duration
	json    bool
}

func (f *controlFlags) add(c *cobra.Command) {
	c.Flags().StringArrayVar(&f.workers, "worker", nil, "worker id to address (repeatable; default: every worker of the namespace)")
	c.Flags().DurationVar(&f.timeout, "timeout", 5*time.Second, "how long to wait for replies")
	c.Flags().BoolVar(&f.json, "json", false, "print one JSON document (a list of replies) on stdout")
}

// check rejects flag values that cannot be meant.
func (f *controlFlags) check() error {
	if f.timeout <= 0 {
		return exitf(ExitUsage, "--timeout must be positive, got %s", f.timeout)
	}
	for _, id := range f.workers {
		if strings.TrimSpace(id) == "" {
			return exitf(ExitUsage, "--worker must not be empty")
		}
	}
	return nil
}

// uniqueIDs returns ids without repeats, in their first order, or a usage
// error if one is blank: a blank id names no task, and a repeated one would
// be stored, counted and listed twice.
func uniqueIDs(flag string, ids []string) ([]string, error) {
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if strings.TrimSpace(id) == "" {
			return nil, exitf(ExitUsage, "%s must not be empty", flag)
		}
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out, nil
}

func (f *controlFlags) target() stem.Target {
	return stem.Target{Workers: f.workers, Timeout: f.timeout}
}

// envRevokeExpiry overrides stem.DefaultRevokeExpiry for the CLI.
const envRevokeExpiry = "STEM_REVOKE_DEFAULT_EXPIRY"

// controller opens the control transport (and, for revoke, the revoke store
// and, when it can be reached, the result backend) and returns a
// Controller and the function that closes them.
func (a *app) controller(ctx context.Context, withRevokes bool) (*stem.Controller, func(), error) {
	opts := a.driverOpts()
	cfg := stem.ControllerConfig{Namespace: opts.Namespace, Logger: opts.Logger}
	keys, err := a.signingKeys()
	if err != nil {
		return nil, nil, err
	}
	cfg.SigningKeys = keys
	if v := a.cfg.Getenv(envRevokeExpiry); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, nil, exitf(ExitConfig, "%s=%q: want a positive duration such as 24h", envRevokeExpiry, v)
		}
		cfg.DefaultExpiry = d
	}
	roles := stemurl.RoleControl
	if withRevokes {
		roles |= stemurl.RoleRevokes
	}
	o, err := a.open(ctx, roles, opts)
	if err != nil {
		return nil, nil, err
	}
	done := func() { a.closeStores(o) }
	if withRevokes {
		// Optional: without it, the revoke is stored and published all
		// the same, but task states are not marked cancelled.
		// A URL that can never work is a configuration error all the
		// same (exit 78, nothing stored or published), as it is for
		// every other command and for the workers; unless it is the
		// revoke store's own URL (a file:// URL in
		// STEM_RESULT_BACKEND_URL serves revokes alone), which opened.
		err := o.Add(ctx, stemurl.RoleResults)
		if errors.Is(err, stemdriver.ErrBadConfig) && o.URLs.Results != o.URLs.Revokes {
			done()
			return nil, nil, openErr(err)
		} else if err != nil {
			fmt.Fprintf(a.errw, "stem: note: result backend unavailable, task states not updated: %v\n", err)
		}
	}
	a.warnMemory(o.URLs.Broker)
	cfg.Control, cfg.Revokes, cfg.Results = o.Control, o.Revokes, o.Results
	c, err := stem.NewController(cfg)
	if err != nil {
		done()
		return nil, nil, err
	}
	return c, done, nil
}

// replyList returns r's replies as the list --json prints: never null.
func replyList(r *stem.Replies) []stemtype.ControlReply {
	if r.Replies == nil {
		return []stemtype.ControlReply{}
	}
	return r.Replies
}

// unansweredReply is a reply that does not answer the command.
type unansweredReply struct {
	// line says which worker and why, for stderr.
	line string
	// undecodable is set for a reply with status ok whose payload cannot
	// be decoded, clear for a worker's error.
	undecodable bool
}

// unanswered returns each reply of r that does not answer the command: an
// error the worker replied with, or a reply with status ok whose payload
// is missing or does not decode as P (stem.Decode), such as a worker of
// another version might send. It returns nil when every reply answers.
func unanswered[P any](r *stem.Replies) []unansweredReply {
	var out []unansweredReply
	for i, rep := range stem.Decode[P](r) {
		switch {
		case rep.Err == nil:
		case r.Replies[i].Status == stemtype.ReplyOK:
			reason := rep.Err
			if inner := errors.Unwrap(reason); inner != nil {
				reason = inner // the decoder's reason, without the worker's id again
			}
			out = append(out, unansweredReply{fmt.Sprintf("worker %s replied ok, but its reply cannot be decoded: %v", rep.WorkerID, reason), true})
		default:
			out = append(out, unansweredReply{fmt.Sprintf("worker %s replied with an error: %v", rep.WorkerID, rep.Err), false})
		}
	}
	return out
}

// finish prints replies (as JSON: the list of replies, or what doc returns
// when it is set) and turns errors, replies that do not answer (bad, see
// unanswered), missing workers and silence into exit code 70.
func (a *app) finish(f *controlFlags, r *stem.Replies, bad []unansweredReply, human func(*stem.Replies), doc func() any) error {
	if f.json {
		var v any = replyList(r)
		if doc != nil {
			v = doc()
		}
		if err := writeJSON(a.out, v); err != nil {
			return err
		}
	} else {
		human(r)
	}
	ns := a.namespace()
	for _, id := range r.Missing {
		if slices.Contains(r.NotLive, id) {
			fmt.Fprintf(a.errw, "stem: worker %s is not live in namespace %s (no presence): not waited for\n", id, ns)
		} else {
			fmt.Fprintf(a.errw, "stem: worker %s did not reply within %s\n", id, f.timeout)
		}
	}
	for _, b := range bad {
		fmt.Fprintf(a.errw, "stem: %s\n", b.line)
	}
	switch {
	case len(r.Replies) == 0 && len(f.workers) == 0 && r.Live != nil && len(r.Live) == 0:
		return exitf(ExitSoftware, "no worker replied: no worker is live in namespace %s", ns)
	case len(r.Replies) == 0 && len(r.Missing) > 0 && len(r.NotLive) == len(r.Missing):
		return exitf(ExitSoftware, "no worker replied: %s not live in namespace %s", strings.Join(r.NotLive, ", "), ns)
	case len(r.Replies) == 0:
		return exitf(ExitSoftware, "no worker replied within %s", f.timeout)
	case len(r.Missing) > 0:
		return exitf(ExitSoftware, "%d worker(s) did not reply: %s", len(r.Missing), strings.Join(r.Missing, ", "))
	case slices.ContainsFunc(bad, func(b unansweredReply) bool { return b.undecodable }):
		return exitf(ExitSoftware, "%d worker(s) replied with an error or a reply that cannot be decoded", len(bad))
	case len(bad) > 0:
		return exitf(ExitSoftware, "%d worker(s) replied with an error", len(bad))
	}
	return nil
}

func sendErr(err error) error {
	switch {
	case errors.Is(err, stemdriver.ErrBadConfig): // refused by the server's ACL or grants
		return &ExitError{Code: ExitConfig, Err: err}
	case errors.Is(err, stem.ErrBrokerUnavailable):
		return &ExitError{Code: ExitUnavailable, Err: err}
	}
	return err
}

// storeErr is sendErr for a revoke or a pause that could not be stored
// (stem.ErrStoreUnavailable): nothing was published.
func storeErr(err error) error {
	code := ExitUnavailable
	if errors.Is(err, stemdriver.ErrBadConfig) { // refused by the server's ACL or grants
		code = ExitConfig
	}
	return &ExitError{Code: code, Err: fmt.Errorf("%w (nothing was published)", err)}
}

// queryCmd builds a control command that sends one query to workers and
// renders their replies, whose payloads are P: ping, inspect and stats.
func queryCmd[P any](a *app, use, short string, f *controlFlags,
	send func(*stem.Controller, context.Context, stem.Target) (*stem.Replies, error),
	render func(*stem.Replies)) *cobra.Command {
	c := &cobra.Command{
		Use:   use,
		Short: short,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return err
			}
			ctl, done, err := a.controller(cmd.Context(), false)
			if err != nil {
				return err
			}
			defer done()
			r, err := send(ctl, cmd.Context(), f.target())
			if err != nil {
				return sendErr(err)
			}
			return a.finish(f, r, unanswered[P](r), render, nil)
		},
	}
	f.add(c)
	return c
}

func (a *app) pingCmd() *cobra.Command {
	var start time.Time
	return queryCmd[stemtype.PingReply](a, "ping", "Broadcast a control ping and print each worker's reply", &controlFlags{},
		func(ctl *stem.Controller, ctx context.Context, t stem.Target) (*stem.Replies, error) {
			start = time.Now()
			return ctl.Ping(ctx, t)
		},
		func(r *stem.Replies) { renderPing(a.out, r, start) })
}

// defaultRevokedLimit is inspect's default --limit: enough to see what was
// revoked lately, far from the million records a worker may hold.
const defaultRevokedLimit = 100

func (a *app) inspectCmd() *cobra.Command {
	var req stemtype.InspectRequest
	c := queryCmd[stemtype.InspectReply](a, "inspect", "Show in-flight tasks (and, if asked, the revoked cache) per worker", &controlFlags{},
		func(ctl *stem.Controller, ctx context.Context, t stem.Target) (*stem.Replies, error) {
			return ctl.Inspect(ctx, t, req)
		},
		func(r *stem.Replies) { renderInspect(a.out, r, req) })
	c.Long = `Show each worker's in-flight tasks and how many revoke records it holds.
With --include-revoked, also list the records, newest (highest version)
first, at most --limit of them (0 lists all: a worker may hold a million).
With --reserved, also list the tasks each worker claimed that wait for a
free slot (its prefetch buffer), with how long each has waited: a worker
claims beyond its free slots only while its tasks run shorter than a few
claim round trips, and hands waiting tasks back to the broker when every
slot stays busy for about 100ms, so another worker can start them.
With --scheduled, also list the delayed tasks (a countdown or an ETA not
reached yet) of each worker's queues, soonest first, at most
--scheduled-limit per queue: they wait in the broker, not in a worker, so
every worker of a queue lists them.`
	c.Flags().BoolVar(&req.IncludeRevoked, "include-revoked", false, "also list each worker's revoke records")
	c.Flags().BoolVar(&req.IncludeReserved, "reserved", false, "also list the tasks each worker claimed that wait for a free slot")
	c.Flags().BoolVar(&req.IncludeScheduled, "scheduled", false, "also list the delayed tasks of each worker's queues")
	c.Flags().IntVar(&req.ScheduledLimit, "scheduled-limit", stemtype.DefaultScheduledLimit, "with --scheduled: list at most this many per queue, the soonest")
	c.Flags().IntVar(&req.Limit, "limit", defaultRevokedLimit, "with --include-revoked: list at most this many records per worker, the newest (0: all)")
	c.PreRunE = func(cmd *cobra.Command, _ []string) error {
		if req.Limit < 0 {
			return exitf(ExitUsage, "inspect: --limit must not be negative, got %d", req.Limit)
		}
		if cmd.Flags().Changed("limit") && !req.IncludeRevoked {
			return exitf(ExitUsage, "inspect: --limit needs --include-revoked")
		}
		if req.ScheduledLimit <= 0 {
			return exitf(ExitUsage, "inspect: --scheduled-limit must be positive, got %d", req.ScheduledLimit)
		}
		if cmd.Flags().Changed("scheduled-limit") && !req.IncludeScheduled {
			return exitf(ExitUsage, "inspect: --scheduled-limit needs --scheduled")
		}
		return nil
	}
	return c
}

func (a *app) statsCmd() *cobra.Command {
	return queryCmd[stemtype.StatsReply](a, "stats", "Print counters such as inflight count and queue depth per worker", &controlFlags{},
		func(ctl *stem.Controller, ctx context.Context, t stem.Target) (*stem.Replies, error) {
			r, err := ctl.Stats(ctx, t)
			if err == nil {
				a.noteStores(r)
			}
			return r, err
		},
		func(r *stem.Replies) { renderStats(a.out, r) })
}

func (a *app) shutdownCmd() *cobra.Command {
	var mode string
	c := queryCmd[stemtype.ShutdownReply](a, "shutdown", "Stop workers: warm, soft or hard", &controlFlags{},
		func(ctl *stem.Controller, ctx context.Context, t stem.Target) (*stem.Replies, error) {
			return ctl.Shutdown(ctx, t, mode)
		},
		func(r *stem.Replies) { renderShutdown(a.out, r) })
	c.Long = `Ask workers (the --worker ones, else every live worker of the namespace) to
stop. Each replies, then stops in --mode:

  warm  stop claiming, let running tasks finish within the worker's
        --shutdown-timeout, then cancel and release the rest (as SIGTERM);
  soft  also cancel the running tasks' contexts at once: they are released
        to the broker as they return, and another worker runs them;
  hard  release every task the worker holds at once and exit without
        waiting for handlers.

Claimed tasks that have not started are released at once in every mode.
A worker under a supervisor (systemd, Kubernetes) is started again by it.`
	c.Flags().StringVar(&mode, "mode", stemtype.ShutdownWarm, "warm, soft or hard")
	c.PreRunE = func(*cobra.Command, []string) error {
		switch mode {
		case stemtype.ShutdownWarm, stemtype.ShutdownSoft, stemtype.ShutdownHard:
			return nil
		}
		return exitf(ExitUsage, "shutdown: --mode %q: want warm, soft or hard", mode)
	}
	return c
}

func (a *app) revokeCmd() *cobra.Command {
	var f controlFlags
	var o stem.RevokeOptions
	var wait bool
	var waitTimeout time.Duration
	c := &cobra.Command{
		Use:   "revoke",
		Short: "Persist a revoke record, then publish it to workers",
		Long: `Persist one revoke record per --task and per --name to the revoke store, then
publish them.
If the store cannot be written, nothing is published and the exit code is 69.
A result backend that cannot be reached is done without (task states are not
marked cancelled); one whose URL can never work is a configuration error
(exit 78), and nothing is stored or published, unless that URL is the revoke
store's too (a file:// URL in $STEM_RESULT_BACKEND_URL serves revokes alone).

A revoked task that has not started never runs: it is acknowledged as
cancelled. Ids the result backend does not know are revoked all the same
and marked unknown (a mistyped or shortened id?). With --json the document
is the list of worker replies, as for every worker command; each revoke
reply's payload also carries "unknown": the ids the result backend does not
know ([] when it knows them all; absent when it could not be asked).

With --terminate, a running copy is asked to stop at its next
checkpoint (Heartbeat, ExtendLease, Progress) and ends cancelled. Revokes
expire after --expires-in (default $STEM_REVOKE_DEFAULT_EXPIRY, else ` + stem.DefaultRevokeExpiry.String() + `).

With --wait, the command then waits, at most --wait-timeout, until every
task that a worker was running when the revoke reached it has stopped, and
prints each task's outcome: terminated (it was running and has stopped),
still-running (the wait timed out: exit 1), not-running (no worker that
replied was running it; it will not start) or unknown (not running, and
the result backend does not know the id). On a terminal a progress line
shows while it waits. With --json each reply's payload also carries
"outcomes", task id to outcome.

With --name TASK, every task of that name is revoked: one a worker meets
while the revoke holds (until --expires-in passes), whenever it was
enqueued, is acknowledged as cancelled without running, and with
--terminate a running one is cancelled. The record is stored apart from
revokes by id, so a worker that starts later honours it too. A worker's
reply lists the names it applied in "names". --wait works with --task only.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return err
			}
			if len(o.TaskIDs) == 0 && len(o.TaskNames) == 0 {
				return exitf(ExitUsage, "revoke: at least one --task or --name is required")
			}
			if len(o.TaskIDs) > 0 {
				ids, err := uniqueIDs("revoke: --task", o.TaskIDs)
				if err != nil {
					return err
				}
				o.TaskIDs = ids
			}
			if len(o.TaskNames) > 0 {
				names, err := uniqueIDs("revoke: --name", o.TaskNames)
				if err != nil {
					return err
				}
				o.TaskNames = names
			}
			for _, id := range o.TaskIDs {
				if err := stemtype.CheckTaskID(id); err != nil {
					return exitf(ExitUsage, "revoke: --task: %v", err)
				}
			}
			if wait && len(o.TaskNames) > 0 {
				return exitf(ExitUsage, "revoke: --wait works with --task only, not --name")
			}
			if o.KillAfter > 0 && !o.Terminate {
				return exitf(ExitUsage, "revoke: --kill-after needs --terminate")
			}
			if o.KillAfter < 0 || o.ExpiresIn < 0 {
				return exitf(ExitUsage, "revoke: durations must not be negative")
			}
			if cmd.Flags().Changed("wait-timeout") && !wait {
				return exitf(ExitUsage, "revoke: --wait-timeout needs --wait")
			}
			if waitTimeout <= 0 {
				return exitf(ExitUsage, "revoke: --wait-timeout must be positive, got %s", waitTimeout)
			}
			ctl, done, err := a.controller(cmd.Context(), true)
			if err != nil {
				return err
			}
			defer done()
			res, err := ctl.Revoke(cmd.Context(), f.target(), o)
			switch {
			case errors.Is(err, stem.ErrStoreUnavailable):
				return storeErr(err)
			case err != nil:
				return sendErr(err)
			}
			if res.MarkErr != nil {
				fmt.Fprintf(a.errw, "stem: warning: the revoke is stored and published, but task states were not updated: %v\n", res.MarkErr)
			}
			if res.Checked && len(res.Unknown) > 0 {
				fmt.Fprintf(a.errw, "stem: warning: %d task id(s) unknown to the result backend (mistyped, shortened or never recorded?), revoked anyway: %s\n",
					len(res.Unknown), strings.Join(res.Unknown, ", "))
			}
			if len(res.Replies.Replies) == 0 && !f.json {
				what := fmt.Sprintf("%d task(s)", len(o.TaskIDs))
				if len(o.TaskNames) > 0 {
					what = fmt.Sprintf("%d task(s) and %d task name(s)", len(o.TaskIDs), len(o.TaskNames))
				}
				fmt.Fprintf(a.out, "revoke stored for %s; workers that start later will honour it\n", what)
			}
			if !wait {
				return a.finish(&f, res.Replies, unanswered[stemtype.RevokeReply](res.Replies), func(r *stem.Replies) { renderRevoke(a.out, res) },
					func() any { return revokeDoc(res) })
			}
			rw := newRevokeWait(res, o.TaskIDs)
			if !f.json && isTerminal(a.errw) {
				rw.progress = a.errw
			}
			if err := rw.run(cmd.Context(), ctl, waitTimeout, f.timeout); err != nil {
				return err
			}
			ferr := a.finish(&f, res.Replies, unanswered[stemtype.RevokeReply](res.Replies), func(r *stem.Replies) {
				renderRevoke(a.out, res)
				rw.render(a.out)
			}, func() any { return rw.withOutcomes(revokeDoc(res)) })
			if still := rw.still(); ferr == nil && len(still) > 0 {
				return fmt.Errorf("revoke: %d task(s) still running after %s: %s", len(still), waitTimeout, strings.Join(still, ", "))
			}
			return ferr
		},
	}
	f.add(c)
	fl := c.Flags()
	fl.Lookup("json").Usage = `print one JSON document on stdout: the list of replies, each payload with "unknown" ids`
	fl.StringArrayVar(&o.TaskIDs, "task", nil, "task id to revoke (repeatable; --task or --name required)")
	fl.StringArrayVar(&o.TaskNames, "name", nil, "task name to revoke: every task of that name (repeatable)")
	fl.BoolVar(&o.Terminate, "terminate", false, "ask running copies to stop at their next checkpoint")
	fl.DurationVar(&o.KillAfter, "kill-after", 0, "with --terminate: kill an isolated task's child process that has not stopped after this long")
	fl.DurationVar(&o.ExpiresIn, "expires-in", 0, "how long the revoke applies (default $STEM_REVOKE_DEFAULT_EXPIRY, else "+stem.DefaultRevokeExpiry.String()+")")
	fl.StringVar(&o.Reason, "reason", "", "why, recorded with the revoke and the cancelled task")
	fl.StringVar(&o.RequestedBy, "requester", "stem-cli", "who, recorded with the revoke and the cancelled task")
	fl.BoolVar(&wait, "wait", false, "wait until the tasks that were running have stopped, and print each task's outcome")
	fl.DurationVar(&waitTimeout, "wait-timeout", 30*time.Second, "with --wait: how long to wait at most")
	return c
}

func (a *app) startCmd() *cobra.Command {
	var cfg stem.WorkerConfig
	var metricsAddr string
	var unknownRetries int
	var unknownBackoff time.Duration
	c := &cobra.Command{
		Use:   "start",
		Short: "Run a worker with this binary's registered tasks",
		Long: `Run a worker until SIGINT or SIGTERM, then shut down warmly: stop claiming,
let running tasks finish within --shutdown-timeout, release the rest. A
signal that arrives while the worker is still starting (opening its stores,
loading revokes) ends it cleanly too, exit 0.

A worker refuses to start (exit 1) while another live worker of the namespace
holds its --id, and names that worker's host and pid. The id of a worker that
was killed without shutting down is free 15 seconds after it was last seen.

Dispatch is fair: the worker claims beyond its free slots (at most
--prefetch more, default 4 x --concurrency) only while its tasks run
shorter than a few claim round trips, as in a drain of short tasks; for
longer tasks it claims for free slots only, so a long task never waits
behind this worker while another has a free slot. Tasks that wait for a
slot while every slot stays busy for about 100ms are handed back to the
queue for other workers. 'stem worker inspect --reserved' shows them.

A store that cannot be reached at start (the broker, the result backend,
the revoke store) does not stop the worker: it claims nothing, logs a
warning naming the store, its URL (redacted) and the error, and retries
with a backoff (100ms doubling up to 2s, with jitter) until the store
answers, so that it consumes within a few seconds of its return. The
revoke set is always loaded before the first claim. With --fail-fast it
exits 69 at once instead (a supervisor then restarts it). A URL that can
never work (a configuration error) exits 78 at once either way.

A task whose name no registered handler knows (a rolling deploy may bring
its handler) is retried --unknown-task-retries times, after
--unknown-task-backoff doubling up to 2 minutes, then fails with an error
naming the task.

With --metrics-addr, the worker serves Prometheus metrics on /metrics,
/healthz (200 while it runs) and /readyz (200 once its revoke set is loaded
and it started, 503 before and while it stops) at that address (":9090",
"127.0.0.1:9090"; port 0 picks a free one, logged at start). See
docs/operations.md for the metrics.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Concurrency <= 0 || cfg.Prefetch < 0 {
				return exitf(ExitUsage, "worker start: --concurrency must be positive and --prefetch not negative")
			}
			if cfg.Lease <= 0 || cfg.ShutdownTimeout <= 0 || cfg.RevokeSyncInterval <= 0 {
				return exitf(ExitUsage, "worker start: --lease, --shutdown-timeout and --revoke-sync must be positive")
			}
			// "*" is the broadcast target: a worker of that id could not be
			// addressed alone. An empty queue name consumes nothing.
			if cmd.Flags().Changed("id") && (strings.TrimSpace(cfg.ID) == "" || cfg.ID == "*") {
				return exitf(ExitUsage, "worker start: --id %q: want a non-empty id other than \"*\" (the broadcast target)", cfg.ID)
			}
			if slices.ContainsFunc(cfg.Queues, func(q string) bool { return strings.TrimSpace(q) == "" }) {
				return exitf(ExitUsage, "worker start: --queue must not be empty")
			}
			if cfg.MaxPayload == 0 {
				return exitf(ExitUsage, "worker start: --max-payload must not be 0 (negative: no limit)")
			}
			if unknownRetries < 0 || unknownBackoff <= 0 {
				return exitf(ExitUsage, "worker start: --unknown-task-retries must not be negative and --unknown-task-backoff must be positive")
			}
			cfg.UnknownTaskRetries = unknownRetries
			if unknownRetries == 0 {
				cfg.UnknownTaskRetries = -1 // fail at once
			}
			cfg.UnknownTaskBackoff = stem.ExponentialBackoff{Base: unknownBackoff,
				Max: max(unknownBackoff, 2*time.Minute), Jitter: 0.2}
			if cmd.Flags().Changed("metrics-addr") && strings.TrimSpace(metricsAddr) == "" {
				return exitf(ExitUsage, "worker start: --metrics-addr must not be empty (leave it out to serve no metrics)")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			go func() {
				<-ctx.Done()
				stop() // a second signal kills the process
			}()
			err := a.runWorker(ctx, cfg, metricsAddr)
			if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
				// A signal arrived while the worker was starting (opening
				// its stores, loading revokes): a requested stop, not an
				// outage for a supervisor to retry. What failed is the
				// cancellation itself, so it is logged at debug only.
				log := a.logger("info")
				log.Info("worker stopped while starting", "worker_id", cfg.ID)
				log.Debug("start interrupted", "worker_id", cfg.ID, "err", err)
				return nil
			}
			return err
		},
	}
	fl := c.Flags()
	fl.StringVar(&cfg.ID, "id", "", "worker id (default host-pid-random)")
	fl.StringArrayVar(&cfg.Queues, "queue", nil, "queue to consume (repeatable; default: the registered tasks' queues)")
	fl.IntVar(&cfg.Concurrency, "concurrency", 10, "tasks run at once")
	fl.IntVar(&cfg.Prefetch, "prefetch", 0, "most claimed tasks waiting beyond those running, used only while tasks are short (default: 4 x concurrency)")
	fl.DurationVar(&cfg.Lease, "lease", stem.DefaultLease, "lease of claimed tasks, renewed while the worker lives; a killed worker's tasks are re-claimed about one lease after")
	fl.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "grace period for running tasks at shutdown")
	fl.DurationVar(&cfg.RevokeSyncInterval, "revoke-sync", 30*time.Second, "interval of the revoke re-sync from the store")
	fl.IntVar(&unknownRetries, "unknown-task-retries", stem.DefaultUnknownTaskRetries, "retries of a task no registered handler knows, before it fails (0: fail at once)")
	fl.DurationVar(&unknownBackoff, "unknown-task-backoff", 10*time.Second, "delay before the first of those retries, doubling up to 2m")
	fl.IntVar(&cfg.MaxPayload, "max-payload", stem.DefaultMaxPayload, "largest task arguments run, in bytes of JSON; larger ones are failed and dead-lettered unread (negative: no limit)")
	fl.BoolVar(&cfg.FailFast, "fail-fast", false, "exit 69 at once when a store cannot be reached at start, instead of waiting and retrying")
	fl.StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus /metrics, /healthz and /readyz at this address (e.g. :9090)")
	return c
}

// runWorker opens the stores cfg's worker needs, runs it until ctx ends and
// closes them, serving its metrics at metricsAddr unless it is "". Its
// errors carry their exit codes.
func (a *app) runWorker(ctx context.Context, cfg stem.WorkerConfig, metricsAddr string) error {
	opts := a.driverOpts()
	opts.Logger = a.logger("info") // a worker's log is its record
	var metrics *stemmetrics.Metrics
	if metricsAddr != "" {
		// Listening first: an address in use fails the start before any
		// store is opened.
		ln, err := net.Listen("tcp", metricsAddr)
		if err != nil {
			return exitf(ExitConfig, "worker start: --metrics-addr %q: %v", metricsAddr, err)
		}
		metrics = stemmetrics.New()
		srv := &http.Server{Handler: metrics.Handler(), ReadHeaderTimeout: 10 * time.Second}
		served := make(chan struct{})
		go func() {
			defer close(served)
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				opts.Logger.Error("metrics server stopped", "err", err)
			}
		}()
		defer func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
			<-served
		}()
		opts.Logger.Info("serving metrics", "addr", ln.Addr().String(), "paths", "/metrics /healthz /readyz")
		cfg.Observer = metrics
	}
	o, err := a.openWorkerStores(ctx, opts, cfg.FailFast)
	if err != nil {
		return err
	}
	defer a.closeStores(o) // runs last, after the executor stopped
	a.warnMemory(o.URLs.Broker)
	cfg.Namespace, cfg.Registry, cfg.Logger = opts.Namespace, a.cfg.Registry, opts.Logger
	cfg.TracerProvider = a.cfg.TracerProvider
	if cfg.SigningKeys, err = a.signingKeys(); err != nil {
		return err
	}
	cfg.Broker, cfg.Results, cfg.Revokes, cfg.Control = o.Broker, o.Results, o.Revokes, o.Control
	stores := o.URLs.Stores()
	cfg.Stores = &stores
	if a.cfg.Executor != nil {
		ex, stopEx, err := a.cfg.Executor(a.cfg.Registry)
		if err != nil {
			return err
		}
		defer stopEx()
		cfg.Executor = ex
	} else if len(isolated.TaskNames(a.cfg.Registry)) > 0 {
		// Tasks cancelled by the shutdown get half its grace period
		// to return before their children are killed.
		pool, err := isolated.NewPool(isolated.PoolConfig{Registry: a.cfg.Registry, Size: cfg.Concurrency,
			Logger: opts.Logger, ShutdownGrace: cfg.ShutdownTimeout / 2})
		if err != nil {
			return err
		}
		defer func() { a.warnClose("isolated pool", pool.Close()) }() // runs after w.Run returned
		cfg.Executor = pool
	}
	w, err := stem.NewWorker(cfg)
	if err != nil {
		return &ExitError{Code: ExitUsage, Err: err}
	}
	if metrics != nil {
		wctx, stopWatch := context.WithCancel(ctx)
		defer stopWatch()
		metrics.Watch(wctx, w)
	}
	if err := w.Run(ctx); err != nil {
		if errors.Is(err, stemdriver.ErrWorkerIDTaken) {
			// Not an outage to retry at once: another live worker
			// holds the id (its host and pid are in the message).
			return &ExitError{Code: ExitFailure, Err: err}
		}
		return &ExitError{Code: ExitUnavailable, Err: err}
	}
	return nil
}

// openWorkerStores opens every store a worker needs. A store that cannot
// be reached (exit 69) is retried, unless failFast, with the backoff
// stem.Worker uses for its own start (100ms doubling up to 2s, with 50%
// jitter), and each failure is logged with the store's redacted URL and
// the error: a worker started before its stores, or during an outage,
// claims nothing and starts once they answer. A configuration error (exit
// 78) is never retried. A signal while it waits ends it with
// context.Canceled (a clean exit, see startCmd).
func (a *app) openWorkerStores(ctx context.Context, opts stemdriver.Options, failFast bool) (*stemurl.Opened, error) {
	backoff := stem.ExponentialBackoff{Base: 100 * time.Millisecond, Max: 2 * time.Second, Jitter: 0.5}
	for attempt := 1; ; attempt++ {
		o, err := a.open(ctx, stemurl.AllRoles, opts)
		var ee *ExitError
		if err == nil || failFast || !errors.As(err, &ee) || ee.Code != ExitUnavailable {
			if err == nil && attempt > 1 {
				opts.Logger.Info("stores reachable: starting", "attempts", attempt)
			}
			return o, err
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w (while waiting for the stores: %v)", ctx.Err(), err)
		}
		store, addr := "store", ""
		var oe *stemurl.OpenError
		if errors.As(err, &oe) {
			store, addr = oe.Role.String(), oe.URL
			if oe.Role == stemurl.RoleControl {
				store = "broker" // the control transport is opened from the broker's URL
			}
		}
		delay := backoff.NextRetry(attempt)
		opts.Logger.Warn(store+" unreachable at start: not claiming any task until it answers; retrying (--fail-fast exits 69 instead)",
			"store", store, "addr", addr, "attempt", attempt, "retry_in", delay.Round(time.Millisecond), "err", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (while waiting for the stores: %v)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

func writeJSON(w interface{ Write([]byte) (int, error) }, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
