package stemcli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/isolated"
	"github.com/stem-go/stem/stemtype"
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
	return nil
}

func (f *controlFlags) target() stem.Target {
	return stem.Target{Workers: f.workers, Timeout: f.timeout}
}

// envRevokeExpiry overrides stem.DefaultRevokeExpiry for the CLI.
const envRevokeExpiry = "STEM_REVOKE_DEFAULT_EXPIRY"

// controller opens the control transport (and, for revoke, the revoke store
// and result backend) and returns a Controller and a closer.
func (a *app) controller(ctx context.Context, withRevokes bool) (*stem.Controller, func(), error) {
	u := a.urls()
	opts := a.driverOpts()
	var closers []func() error
	closeAll := func() {
		for _, c := range closers {
			_ = c()
		}
	}
	cfg := stem.ControllerConfig{Namespace: opts.Namespace}
	if v := a.cfg.Getenv(envRevokeExpiry); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, nil, exitf(ExitConfig, "%s=%q: want a positive duration such as 24h", envRevokeExpiry, v)
		}
		cfg.DefaultExpiry = d
	}
	if withRevokes {
		if err := checkURLs(u); err != nil {
			return nil, nil, err
		}
		store, err := a.cfg.Resolver.OpenRevokes(ctx, u.Revokes, opts)
		if err != nil {
			return nil, nil, openErr("revoke store (from "+u.RevokesFrom+")", u.Revokes, err)
		}
		closers = append(closers, store.Close)
		cfg.Revokes = store
		if res, err := a.cfg.Resolver.OpenResults(ctx, u.Results, opts); err == nil {
			closers = append(closers, res.Close)
			cfg.Results = res
		} else {
			fmt.Fprintf(a.errw, "stem: note: result backend unavailable, task states not updated: %v\n", err)
		}
	}
	ctl, err := a.cfg.Resolver.OpenControl(ctx, u.Broker, opts)
	if err != nil {
		closeAll()
		return nil, nil, openErr("broker", u.Broker, err)
	}
	closers = append(closers, ctl.Close)
	cfg.Control = ctl
	a.warnMemory(u.Broker)
	c, err := stem.NewController(cfg)
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	return c, closeAll, nil
}

// finish prints replies and turns errors, missing workers and silence into
// exit code 70.
func (a *app) finish(f *controlFlags, r *stem.Replies, human func(*stem.Replies)) error {
	if f.json {
		out := r.Replies
		if out == nil {
			out = []stemtype.ControlReply{}
		}
		if err := writeJSON(a.out, out); err != nil {
			return err
		}
	} else {
		human(r)
	}
	for _, id := range r.Missing {
		fmt.Fprintf(a.errw, "stem: worker %s did not reply within %s\n", id, f.timeout)
	}
	for _, rep := range r.Errors() {
		msg := "error"
		if rep.Error != nil {
			msg = rep.Error.Message
		}
		fmt.Fprintf(a.errw, "stem: worker %s replied with an error: %s\n", rep.WorkerID, msg)
	}
	switch {
	case len(r.Replies) == 0:
		return exitf(ExitSoftware, "no worker replied within %s", f.timeout)
	case len(r.Missing) > 0:
		return exitf(ExitSoftware, "%d targeted worker(s) did not reply", len(r.Missing))
	case len(r.Errors()) > 0:
		return exitf(ExitSoftware, "%d worker(s) replied with an error", len(r.Errors()))
	}
	return nil
}

func sendErr(err error) error {
	if errors.Is(err, stem.ErrBrokerUnavailable) {
		return &ExitError{Code: ExitUnavailable, Err: err}
	}
	return err
}

// queryCmd builds a control command that sends one query to workers and
// renders their replies: ping, inspect and stats.
func (a *app) queryCmd(use, short string, f *controlFlags,
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
			return a.finish(f, r, render)
		},
	}
	f.add(c)
	return c
}

func (a *app) pingCmd() *cobra.Command {
	var start time.Time
	return a.queryCmd("ping", "Broadcast a control ping and print each worker's reply", &controlFlags{},
		func(ctl *stem.Controller, ctx context.Context, t stem.Target) (*stem.Replies, error) {
			start = time.Now()
			return ctl.Ping(ctx, t)
		},
		func(r *stem.Replies) { renderPing(a.out, r, start) })
}

func (a *app) inspectCmd() *cobra.Command {
	var withRevoked bool
	c := a.queryCmd("inspect", "Show in-flight tasks (and the revoked cache) per worker", &controlFlags{},
		func(ctl *stem.Controller, ctx context.Context, t stem.Target) (*stem.Replies, error) {
			return ctl.Inspect(ctx, t, withRevoked)
		},
		func(r *stem.Replies) { renderInspect(a.out, r, withRevoked) })
	c.Flags().BoolVar(&withRevoked, "include-revoked", true, "include each worker's revoked cache")
	return c
}

func (a *app) statsCmd() *cobra.Command {
	return a.queryCmd("stats", "Print counters such as inflight count and queue depth per worker", &controlFlags{},
		func(ctl *stem.Controller, ctx context.Context, t stem.Target) (*stem.Replies, error) {
			r, err := ctl.Stats(ctx, t)
			if err == nil {
				a.noteStores(r)
			}
			return r, err
		},
		func(r *stem.Replies) { renderStats(a.out, r) })
}

func (a *app) revokeCmd() *cobra.Command {
	var f controlFlags
	var o stem.RevokeOptions
	c := &cobra.Command{
		Use:   "revoke",
		Short: "Persist a revoke record, then publish it to workers",
		Long: `Persist one revoke record per --task to the revoke store, then publish them.
If the store cannot be written, nothing is published and the exit code is 69.

A revoked task that has not started never runs: it is acknowledged as
cancelled. With --terminate, a running copy is asked to stop at its next
checkpoint (Heartbeat, ExtendLease, Progress) and ends cancelled. Revokes
expire after --expires-in (default $STEM_REVOKE_DEFAULT_EXPIRY, else ` + stem.DefaultRevokeExpiry.String() + `).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return err
			}
			if len(o.TaskIDs) == 0 {
				return exitf(ExitUsage, "revoke: at least one --task is required")
			}
			if o.KillAfter > 0 && !o.Terminate {
				return exitf(ExitUsage, "revoke: --kill-after needs --terminate")
			}
			if o.KillAfter < 0 || o.ExpiresIn < 0 {
				return exitf(ExitUsage, "revoke: durations must not be negative")
			}
			ctl, done, err := a.controller(cmd.Context(), true)
			if err != nil {
				return err
			}
			defer done()
			recs, r, err := ctl.Revoke(cmd.Context(), f.target(), o)
			switch {
			case errors.Is(err, stem.ErrStoreUnavailable):
				return &ExitError{Code: ExitUnavailable, Err: fmt.Errorf("%w (nothing was published)", err)}
			case err != nil:
				return sendErr(err)
			}
			if len(r.Replies) == 0 && !f.json {
				fmt.Fprintf(a.out, "revoke stored for %d task(s); workers that start later will honour it\n", len(recs))
			}
			return a.finish(&f, r, func(r *stem.Replies) { renderRevoke(a.out, recs, r) })
		},
	}
	f.add(c)
	fl := c.Flags()
	fl.StringArrayVar(&o.TaskIDs, "task", nil, "task id to revoke (repeatable, required)")
	fl.BoolVar(&o.Terminate, "terminate", false, "ask running copies to stop at their next checkpoint")
	fl.DurationVar(&o.KillAfter, "kill-after", 0, "with --terminate: kill an isolated task's child process that has not stopped after this long")
	fl.DurationVar(&o.ExpiresIn, "expires-in", 0, "how long the revoke applies (default $STEM_REVOKE_DEFAULT_EXPIRY, else "+stem.DefaultRevokeExpiry.String()+")")
	fl.StringVar(&o.Reason, "reason", "", "why, recorded with the revoke and the cancelled task")
	fl.StringVar(&o.RequestedBy, "requester", "stem-cli", "who, recorded with the revoke and the cancelled task")
	return c
}

func (a *app) startCmd() *cobra.Command {
	var cfg stem.WorkerConfig
	c := &cobra.Command{
		Use:   "start",
		Short: "Run a worker with this binary's registered tasks",
		Long: `Run a worker until SIGINT or SIGTERM, then shut down warmly: stop claiming,
let running tasks finish within --shutdown-timeout, release the rest.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Concurrency <= 0 || cfg.Prefetch < 0 {
				return exitf(ExitUsage, "worker start: --concurrency must be positive and --prefetch not negative")
			}
			if cfg.Lease <= 0 || cfg.ShutdownTimeout <= 0 || cfg.RevokeSyncInterval <= 0 {
				return exitf(ExitUsage, "worker start: --lease, --shutdown-timeout and --revoke-sync must be positive")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			go func() {
				<-ctx.Done()
				stop() // a second signal kills the process
			}()
			u := a.urls()
			if err := checkURLs(u); err != nil {
				return err
			}
			opts := a.driverOpts()
			opts.Logger = a.logger("info") // a worker's log is its record
			var closers []func() error
			defer func() {
				for i := len(closers) - 1; i >= 0; i-- {
					_ = closers[i]()
				}
			}()
			b, err := a.cfg.Resolver.OpenBroker(ctx, u.Broker, opts)
			if err != nil {
				return openErr("broker", u.Broker, err)
			}
			closers = append(closers, b.Close)
			res, err := a.cfg.Resolver.OpenResults(ctx, u.Results, opts)
			if err != nil {
				return openErr("result backend", u.Results, err)
			}
			closers = append(closers, res.Close)
			rev, err := a.cfg.Resolver.OpenRevokes(ctx, u.Revokes, opts)
			if err != nil {
				return openErr("revoke store (from "+u.RevokesFrom+")", u.Revokes, err)
			}
			closers = append(closers, rev.Close)
			ctl, err := a.cfg.Resolver.OpenControl(ctx, u.Broker, opts)
			if err != nil {
				return openErr("control transport", u.Broker, err)
			}
			closers = append(closers, ctl.Close)
			a.warnMemory(u.Broker)
			cfg.Namespace, cfg.Registry, cfg.Logger = opts.Namespace, a.cfg.Registry, opts.Logger
			cfg.Broker, cfg.Results, cfg.Revokes, cfg.Control = b, res, rev, ctl
			stores := u.Stores()
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
				defer pool.Close() // runs after w.Run returned
				cfg.Executor = pool
			}
			w, err := stem.NewWorker(cfg)
			if err != nil {
				return &ExitError{Code: ExitUsage, Err: err}
			}
			if err := w.Run(ctx); err != nil {
				return &ExitError{Code: ExitUnavailable, Err: err}
			}
			return nil
		},
	}
	fl := c.Flags()
	fl.StringVar(&cfg.ID, "id", "", "worker id (default host-pid-random)")
	fl.StringArrayVar(&cfg.Queues, "queue", nil, "queue to consume (repeatable; default: the registered tasks' queues)")
	fl.IntVar(&cfg.Concurrency, "concurrency", 10, "tasks run at once")
	fl.IntVar(&cfg.Prefetch, "prefetch", 0, "claimed tasks waiting beyond those running (default: 4 x concurrency)")
	fl.DurationVar(&cfg.Lease, "lease", 30*time.Second, "lease of claimed tasks, renewed while the worker lives")
	fl.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "grace period for running tasks at shutdown")
	fl.DurationVar(&cfg.RevokeSyncInterval, "revoke-sync", 30*time.Second, "interval of the revoke re-sync from the store")
	return c
}

func writeJSON(w interface{ Write([]byte) (int, error) }, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
