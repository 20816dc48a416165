package stemcli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/isolated"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
	"github.com/stem-go/stem/stemurl"
)

func (a *app) demoCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "A self-contained tour: producer, two workers and the control plane in one process",
		Long: `Run a producer, two workers and the control plane in this process on an
in-process store (memory://, no server needed), and narrate what happens:
tasks enqueued, run, retried, failed and succeeded; then ping, inspect and stats;
a queued task revoked (it never runs), a running one terminated at its next
heartbeat, and a runaway isolated one killed with --kill-after.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.demo(cmd.Context())
		},
	}
}

// demoEnv is the demo's deployment.
type demoEnv struct {
	out    io.Writer
	client *stem.Client
	start  time.Time
}

func (a *app) demo(ctx context.Context) error {
	reg := stem.NewRegistry()
	a.cfg.Demo(reg)
	// A Resolver of its own: the demo's memory:// hub is its alone.
	const url, from = "memory://", "demo"
	opts := stemdriver.Options{Namespace: a.namespace(), Logger: a.logger("error")}
	o, err := openStores(ctx, stemurl.New(), stemurl.URLs{Broker: url, Results: url, Revokes: url,
		BrokerFrom: from, ResultsFrom: from, RevokesFrom: from}, stemurl.AllRoles, opts)
	if err != nil {
		return err
	}
	defer a.closeStores(o)
	broker, results, revokes, control := o.Broker, o.Results, o.Revokes, o.Control
	client, err := stem.NewClient(stem.ClientConfig{Broker: broker, Results: results, Registry: reg})
	if err != nil {
		return err
	}
	ctl, err := stem.NewController(stem.ControllerConfig{Namespace: opts.Namespace, Control: control, Revokes: revokes, Results: results})
	if err != nil {
		return err
	}
	d := &demoEnv{out: a.out, client: client, start: time.Now()}

	fmt.Fprintf(a.out, "stem demo: a producer, two workers and the control plane in one process,\n")
	fmt.Fprintf(a.out, "on %s (the embedded default: no server needed). Namespace %q.\n\n", url, opts.Namespace)

	wctx, stopWorkers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var runErr error
	var errMu sync.Mutex
	hasIsolated := len(isolated.TaskNames(reg)) > 0
	for _, id := range []string{"demo-worker-1", "demo-worker-2"} {
		var exec stem.Executor
		if hasIsolated {
			// Isolated tasks run in child processes of this binary.
			pool, err := isolated.NewPool(isolated.PoolConfig{Registry: reg, Size: 2, Logger: opts.Logger, ShutdownGrace: time.Second})
			if err != nil {
				stopWorkers()
				return err
			}
			defer func() { a.warnClose("isolated pool", pool.Close()) }()
			exec = pool
		}
		w, err := stem.NewWorker(stem.WorkerConfig{ID: id, Namespace: opts.Namespace, Registry: reg, Concurrency: 2,
			Broker: broker, Results: results, Revokes: revokes, Control: control, Logger: opts.Logger, Executor: exec,
			ClaimWait: 100 * time.Millisecond, ShutdownTimeout: 2 * time.Second,
			// The demo shows an unknown task's final failure at once, not
			// after the minutes of retries a rolling deploy gets.
			UnknownTaskRetries: -1})
		if err != nil {
			stopWorkers()
			return err
		}
		wg.Go(func() {
			if err := w.Run(wctx); err != nil {
				errMu.Lock()
				runErr = errors.Join(runErr, err)
				errMu.Unlock()
			}
		})
		<-w.Ready()
	}
	defer func() {
		stopWorkers()
		wg.Wait()
	}()
	fmt.Fprintf(a.out, "Started workers demo-worker-1 and demo-worker-2 (concurrency 2 each).\n\n")

	// Part 1: tasks that succeed, retry, fail, and one nobody knows.
	fmt.Fprintln(a.out, "1. Enqueue five tasks:")
	one := 1
	batch := []stem.EnqueueRequest{
		{Task: "demo.echo", Args: map[string]string{"hello": "world"}},
		{Task: "demo.flaky", Args: map[string]int{"failures": 2}},
		{Task: "demo.fail", Options: stem.EnqueueOptions{MaxRetries: &one}},
		{Task: "demo.sleep", Args: map[string]float64{"seconds": 0.3}},
		{Task: "no.such.task"},
	}
	ids, err := client.EnqueueBatch(ctx, batch)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(a.out, 0, 0, 2, ' ', 0)
	for i, r := range batch {
		args, _ := json.Marshal(r.Args)
		note := ""
		if r.Options.MaxRetries != nil {
			note = fmt.Sprintf("(max retries %d)", *r.Options.MaxRetries)
		}
		fmt.Fprintf(tw, "   %s\t%s\t%s\t%s\n", ids[i], r.Task, args, note)
	}
	tw.Flush()
	fmt.Fprintln(a.out, "\n   Watching their states change (time since the demo started):")
	names := map[string]string{}
	for i, id := range ids {
		names[id] = batch[i].Task
	}
	if err := d.watch(ctx, ids, names); err != nil {
		return err
	}

	// Part 2: the control plane.
	fmt.Fprintln(a.out, "\n2. The control plane. Long tasks run, another waits in the queue:")
	longID, err := client.Enqueue(ctx, "demo.sleep", map[string]float64{"seconds": 30, "heartbeat": 0.05}, stem.EnqueueOptions{})
	if err != nil {
		return err
	}
	queuedID, err := client.Enqueue(ctx, "demo.echo", map[string]string{"never": "runs"}, stem.EnqueueOptions{Countdown: 800 * time.Millisecond})
	if err != nil {
		return err
	}
	fmt.Fprintf(a.out, "   %s  demo.sleep {\"seconds\":30}   (running)\n", longID)
	fmt.Fprintf(a.out, "   %s  demo.echo, countdown 0.8s   (queued)\n", queuedID)
	var spinID string
	if hasIsolated {
		if spinID, err = client.Enqueue(ctx, "demo.spin-isolated", map[string]float64{"seconds": 30}, stem.EnqueueOptions{}); err != nil {
			return err
		}
		fmt.Fprintf(a.out, "   %s  demo.spin-isolated {\"seconds\":30}: burns CPU in a child process, never checkpoints\n", spinID)
		if err := d.until(ctx, spinID, func(r *stemtype.TaskResult) bool { return r.State == stemtype.StateStarted }); err != nil {
			return err
		}
	}
	if err := d.until(ctx, longID, func(r *stemtype.TaskResult) bool { return r.Progress != nil }); err != nil {
		return err
	}
	target := stem.Target{Timeout: 2 * time.Second}

	fmt.Fprintln(a.out, "\n$ stem worker ping")
	start := time.Now()
	r, err := ctl.Ping(ctx, target)
	if err != nil {
		return err
	}
	renderPing(indent(a.out), r, start)

	fmt.Fprintln(a.out, "\n$ stem worker inspect --include-revoked")
	inspect := stemtype.InspectRequest{IncludeRevoked: true, Limit: defaultRevokedLimit}
	if r, err = ctl.Inspect(ctx, target, inspect); err != nil {
		return err
	}
	renderInspect(indent(a.out), r, inspect)

	fmt.Fprintln(a.out, "\n$ stem worker stats")
	if r, err = ctl.Stats(ctx, target); err != nil {
		return err
	}
	renderStats(indent(a.out), r)

	fmt.Fprintf(a.out, "\n$ stem worker revoke --task %s --reason \"not needed\"\n", queuedID)
	rv, err := ctl.Revoke(ctx, target, stem.RevokeOptions{TaskIDs: []string{queuedID}, Reason: "not needed", RequestedBy: "demo"})
	if err != nil {
		return err
	}
	renderRevoke(indent(a.out), rv)

	fmt.Fprintf(a.out, "\n$ stem worker revoke --terminate --task %s --reason \"taking too long\"\n", longID)
	revokedAt := time.Now()
	rv, err = ctl.Revoke(ctx, target, stem.RevokeOptions{TaskIDs: []string{longID}, Terminate: true, Reason: "taking too long", RequestedBy: "demo"})
	if err != nil {
		return err
	}
	renderRevoke(indent(a.out), rv)
	if err := d.wait(ctx, longID); err != nil {
		return err
	}
	fmt.Fprintf(a.out, "   the running task stopped %s after the revoke, at its next heartbeat\n", time.Since(revokedAt).Round(time.Millisecond))
	if spinID != "" {
		fmt.Fprintf(a.out, "\n$ stem worker revoke --terminate --kill-after 300ms --task %s --reason \"runaway\"\n", spinID)
		killAt := time.Now()
		rv, err = ctl.Revoke(ctx, target, stem.RevokeOptions{TaskIDs: []string{spinID}, Terminate: true, KillAfter: 300 * time.Millisecond, Reason: "runaway", RequestedBy: "demo"})
		if err != nil {
			return err
		}
		renderRevoke(indent(a.out), rv)
		if err := d.wait(ctx, spinID); err != nil {
			return err
		}
		fmt.Fprintf(a.out, "   the spinning task ignored the request; its child process was killed %s after the revoke\n", time.Since(killAt).Round(time.Millisecond))
	}
	// The queued task reaches its countdown; the worker that claims it
	// acknowledges it as cancelled without running it.
	time.Sleep(time.Until(revokedAt.Add(900 * time.Millisecond)))

	fmt.Fprintln(a.out, "\n3. Final states:")
	tw = tabwriter.NewWriter(a.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "   ID\tTASK\tSTATE\tATTEMPT\tDETAIL")
	final := append(ids, longID, queuedID)
	if spinID != "" {
		final = append(final, spinID)
	}
	for _, id := range final {
		res, err := client.Status(ctx, id)
		if err != nil {
			return err
		}
		fmt.Fprintf(tw, "   %s\t%s\t%s\t%d\t%s\n", id, res.Task, res.State, res.Attempt, detail(res))
	}
	tw.Flush()
	fmt.Fprintf(a.out, "\nDone in %s. Try it across processes, still with no server: see the README.\n", time.Since(d.start).Round(time.Millisecond))
	stopWorkers()
	wg.Wait()
	return runErr
}

// demoPatience bounds each wait of the demo: its tasks take a second or
// two, so a demo still waiting after this is broken.
const demoPatience = 30 * time.Second

// watch prints every state change of ids until all are final. It reads
// the states with Client.Status, since Client.Wait reports only the final
// one and the demo narrates each step.
func (d *demoEnv) watch(ctx context.Context, ids []string, names map[string]string) error {
	last := map[string]string{}
	width := 0
	for _, n := range names {
		width = max(width, len(n))
	}
	deadline := time.Now().Add(demoPatience)
	for time.Now().Before(deadline) {
		final := 0
		for _, id := range ids {
			r, err := d.client.Status(ctx, id)
			if err != nil {
				continue
			}
			key := fmt.Sprintf("%s/%d", r.State, r.Attempt)
			if last[id] != key {
				last[id] = key
				fmt.Fprintf(d.out, "   +%.3fs  %s  %-*s  %-9s  attempt %d  %s\n", time.Since(d.start).Seconds(), id,
					width, names[id], r.State, r.Attempt, detail(r))
			}
			if r.State.Final() {
				final++
			}
		}
		if final == len(ids) {
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return fmt.Errorf("demo: tasks did not finish within %s", demoPatience)
}

// wait waits with Client.Wait until the task's state is final.
func (d *demoEnv) wait(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, demoPatience)
	defer cancel()
	if _, err := d.client.Wait(ctx, id); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	return nil
}

// until waits until the task's state, read with Client.Status, is one ok
// accepts: a state before the final one, which Client.Wait does not wait
// for.
func (d *demoEnv) until(ctx context.Context, id string, ok func(*stemtype.TaskResult) bool) error {
	deadline := time.Now().Add(demoPatience)
	for time.Now().Before(deadline) {
		if r, err := d.client.Status(ctx, id); err == nil && ok(r) {
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return fmt.Errorf("demo: task %s did not reach the expected state", id)
}

func detail(r *stemtype.TaskResult) string {
	switch {
	case r.State == stemtype.StateStarted:
		return "on " + r.WorkerID
	case r.State == stemtype.StateCancelled && r.Meta != nil:
		return fmt.Sprintf("revoked by %s: %s", r.Meta[stemtype.MetaRevokedBy], r.Meta[stemtype.MetaRevokedReason])
	case r.Error != nil:
		return r.Error.Message
	case len(r.Result) > 0:
		return "result " + string(r.Result)
	}
	return ""
}

// indent prefixes every line written through it with three spaces.
func indent(w io.Writer) io.Writer { return &indenter{w: w, bol: true} }

type indenter struct {
	w   io.Writer
	bol bool
}

func (i *indenter) Write(p []byte) (int, error) {
	var b strings.Builder
	for _, c := range string(p) {
		if i.bol {
			b.WriteString("   ")
		}
		b.WriteRune(c)
		i.bol = c == '\n'
	}
	if _, err := io.WriteString(i.w, b.String()); err != nil {
		return 0, err
	}
	return len(p), nil
}
