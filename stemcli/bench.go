package stemcli

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemurl"
)

// benchFlags configure `stem bench`.
type benchFlags struct {
	tasks       int
	concurrency int
	prefetch    int
	batch       int
	results     bool
	mode        string
	cpuprofile  string
}

func (a *app) benchCmd() *cobra.Command {
	var f benchFlags
	c := &cobra.Command{
		Use:   "bench",
		Short: "Measure no-op task throughput on the configured broker",
		Long: `Measure no-op task throughput on the configured broker (a fresh namespace
each run, so nothing else is disturbed):

  drain  enqueue --tasks first, then run one worker until all are done
  mixed  run the worker while enqueueing

Prints enqueue and processing rates. On a terminal, a live progress bar of
each phase is drawn on stderr (never when stderr is a pipe or a file).
Compare figures measured in one run on one machine only.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.tasks <= 0 || f.concurrency <= 0 || f.batch <= 0 {
				return exitf(ExitUsage, "bench: --tasks, --concurrency and --batch must be positive")
			}
			if f.mode != "drain" && f.mode != "mixed" {
				return exitf(ExitUsage, "bench: --mode must be drain or mixed")
			}
			return a.bench(cmd.Context(), f)
		},
	}
	fl := c.Flags()
	fl.IntVar(&f.tasks, "tasks", 20000, "number of no-op tasks")
	fl.IntVar(&f.concurrency, "concurrency", 10, "worker concurrency")
	fl.IntVar(&f.prefetch, "prefetch", 0, "worker prefetch cap (default: 4 x concurrency)")
	fl.IntVar(&f.batch, "batch", 500, "tasks per enqueue call")
	fl.BoolVar(&f.results, "results", true, "record task states in the result backend")
	fl.StringVar(&f.mode, "mode", "drain", "drain or mixed")
	fl.StringVar(&f.cpuprofile, "cpuprofile", "", "write a CPU profile of the processing phase to this file")
	return c
}

func (a *app) bench(ctx context.Context, f benchFlags) error {
	opts := a.driverOpts()
	opts.Namespace = "bench-" + stem.NewTaskID()[:8]
	roles := stemurl.RoleBroker
	if f.results {
		roles |= stemurl.RoleResults
	}
	o, err := a.open(ctx, roles, opts)
	if err != nil {
		return err
	}
	defer a.closeStores(o)
	u, b := o.URLs, o.Broker
	reg := stem.NewRegistry()
	stem.Register(reg, "bench.noop", func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }, stem.TaskOptions{})
	ccfg := stem.ClientConfig{Broker: b, Registry: reg}
	wcfg := stem.WorkerConfig{Registry: reg, Broker: b, Namespace: opts.Namespace, Concurrency: f.concurrency,
		Prefetch: f.prefetch, Logger: opts.Logger, ClaimWait: 100 * time.Millisecond}
	ccfg.Results, wcfg.Results = o.Results, o.Results // nil without --results
	client, err := stem.NewClient(ccfg)
	if err != nil {
		return err
	}
	enqueue := func() (time.Duration, error) {
		start := time.Now()
		args := []byte(`{"n":1}`)
		bar := a.progress(f.tasks, "enqueue")
		defer finishBar(bar)
		for done := 0; done < f.tasks; {
			n := min(f.batch, f.tasks-done)
			reqs := make([]stem.EnqueueRequest, n)
			for i := range reqs {
				reqs[i] = stem.EnqueueRequest{Task: "bench.noop", Args: stem.Args(args)}
			}
			if _, err := client.EnqueueBatch(ctx, reqs); err != nil {
				return 0, err
			}
			done += n
			setBar(bar, done)
		}
		return time.Since(start), nil
	}
	fmt.Fprintf(a.out, "bench: %d no-op tasks, mode %s, concurrency %d, results %t, broker %s, GOMAXPROCS %d\n",
		f.tasks, f.mode, f.concurrency, f.results, redactedScheme(u.Broker), runtime.GOMAXPROCS(0))
	var enqTook time.Duration
	if f.mode == "drain" {
		if enqTook, err = enqueue(); err != nil {
			return err
		}
		fmt.Fprintf(a.out, "enqueue  %8.0f tasks/s  (%s)\n", float64(f.tasks)/enqTook.Seconds(), enqTook.Round(time.Millisecond))
	}
	w, err := stem.NewWorker(wcfg)
	if err != nil {
		return err
	}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	<-w.Ready()
	if f.cpuprofile != "" {
		pf, err := os.Create(f.cpuprofile)
		if err != nil {
			stop()
			<-done
			return err
		}
		defer func() { a.warnClose("CPU profile "+f.cpuprofile, pf.Close()) }()
		if err := pprof.StartCPUProfile(pf); err != nil {
			stop()
			<-done
			return err
		}
		defer pprof.StopCPUProfile()
	}
	start := time.Now()
	if f.mode == "mixed" {
		if enqTook, err = enqueue(); err != nil {
			stop()
			<-done
			return err
		}
		fmt.Fprintf(a.out, "enqueue  %8.0f tasks/s  (%s, while the worker ran)\n", float64(f.tasks)/enqTook.Seconds(), enqTook.Round(time.Millisecond))
	}
	bar := a.progress(f.tasks, "process")
	for {
		n := w.Stats(ctx).Processed
		setBar(bar, int(n))
		if n >= int64(f.tasks) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	took := time.Since(start)
	finishBar(bar)
	stop()
	if err := <-done; err != nil {
		return err
	}
	fmt.Fprintf(a.out, "process  %8.0f tasks/s  (%s)\n", float64(f.tasks)/took.Seconds(), took.Round(time.Millisecond))
	return nil
}

func redactedScheme(u string) string {
	for i := 0; i+2 < len(u); i++ {
		if u[i:i+3] == "://" {
			return u[:i]
		}
	}
	return u
}

// progress returns a live progress bar of total tasks drawn on stderr when
// stderr is a terminal, and nil otherwise: a pipe or a file gets the plain
// result lines only.
func (a *app) progress(total int, what string) *progressbar.ProgressBar {
	f, ok := a.errw.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return newBar(a.errw, total, what)
}

// newBar returns a progress bar of total tasks drawn on w, redrawn at most
// every 100ms and cleared when finished.
func newBar(w io.Writer, total int, what string) *progressbar.ProgressBar {
	return progressbar.NewOptions(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("tasks"),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
}

// setBar moves bar (nil: no bar) to n tasks.
func setBar(bar *progressbar.ProgressBar, n int) {
	if bar != nil {
		_ = bar.Set(n)
	}
}

// finishBar completes and clears bar (nil: no bar).
func finishBar(bar *progressbar.ProgressBar) {
	if bar != nil {
		_ = bar.Finish()
	}
}
