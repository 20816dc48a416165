// Command peers measures stem beside its peers on one backend, with the
// same no-op workloads, in one process per figure, so that BENCHMARKS.md
// can put them side by side. It lives in a Go module of its own so that
// the stem module never depends on a peer.
//
// Usage:
//
//	go run . -system stem|river -url URL -scenario NAME [-concurrency N]
//	         [-tasks N] [-batch N] [-river-fetch-cooldown D] [-rounds K]
//	         [-interval D] [-idle D] [-note TEXT] [-json]
//	go run . -table FILE   # FILE: the -json lines of several runs
//
// Systems and URLs:
//
//	stem   any URL stemurl opens (redis://, memory://; sqlite:// and
//	       postgres:// once wired in), every role on that URL, in a fresh
//	       namespace per run
//	river  River v0.51 through its public API: postgres:// or
//	       postgresql:// (riverpgxv5, pgxpool with its defaults, a fresh
//	       schema per run migrated with rivermigrate and dropped after), or
//	       sqlite://PATH (riversqlite on modernc.org/sqlite through
//	       database/sql with MaxOpenConns 1 as River's documentation
//	       recommends, a fresh file per run, SQLite's default rollback
//	       journal unless the URL's query sets one, e.g.
//	       ?_pragma=journal_mode(WAL), which run.sh's river-wal does)
//
// River's client keeps its defaults but the queue's MaxWorkers (the
// concurrency) and, with -river-fetch-cooldown, FetchCooldown; stem's
// worker keeps its defaults but Concurrency. Every figure is measured in
// this process: CPU figures leave the server's CPU out.
//
// For sqlite:// URLs both systems get a fresh database file per run, in a
// new directory beside PATH (in the temporary directory when PATH is
// empty) that is removed afterwards; the URL's query is kept.
//
// Scenarios (each prints one line per figure, or one JSON object with -json):
//
//	drain    enqueue -tasks no-op tasks in batches of -batch (stem:
//	         Client.EnqueueBatch; River: Client.InsertMany), then start the
//	         worker and time until every handler has run: tasks/s; once the
//	         worker stopped, check (untimed) that every task is recorded as
//	         succeeded (stem's result backend) or completed (River's JobList)
//	pickup   an idle worker; enqueue one task every -interval, -rounds times
//	         (after 2 uncounted warm-up rounds); latency from before the
//	         enqueue call to the handler's start: p50/p99
//	idlecpu  start a worker, let it sit idle for -idle, report the process's
//	         CPU time (getrusage user+sys) as a percentage of one core
//	cancel   start a task that runs until its context ends; once it runs,
//	         cancel it (stem: Controller.Revoke with Terminate through the
//	         control transport; River: Client.JobCancel) and time until the
//	         handler's context is cancelled; -rounds rounds: p50/p99
//
// -note names a configuration in the figures' labels (run.sh's "WAL").
// -table prints a markdown table of the medians of -json lines, one row
// per configuration; run.sh runs a whole table for one backend.
//
//	asynq    asynq v0.26 on redis:// only, a fresh queue per run deleted
//	         after; its cancel (Inspector.CancelProcessing) is followed by
//	         the task's state: asynq schedules a retry, so the table's
//	         "after cancel" says it runs again (the retry is deleted so it
//	         does not run during the rounds)
//	ceiling  the bare Redis stream consumer of PERFORMANCE.md, on redis://
//	         only: no cancel, so no cancel scenario
//
// A new system implements the system interface in a file of its own and
// adds a case to openSystem.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"time"
)

// config is what one run measures, from the command line.
type config struct {
	System        string
	URL           string
	Scenario      string
	Concurrency   int
	Tasks         int
	Batch         int
	FetchCooldown time.Duration
	Rounds        int
	Interval      time.Duration
	Idle          time.Duration
	Note          string
	JSON          bool
	CPUProfile    string
	Producers     int
}

// figure is the outcome of one run: the -json line, and the input of -table.
type figure struct {
	System        string  `json:"system"`
	Backend       string  `json:"backend"`
	FetchCooldown string  `json:"fetch_cooldown,omitempty"`
	Note          string  `json:"note,omitempty"`
	Scenario      string  `json:"scenario"`
	Concurrency   int     `json:"concurrency"`
	Tasks         int     `json:"tasks,omitempty"`
	Rounds        int     `json:"rounds,omitempty"`
	TasksPerSec   float64 `json:"tasks_per_s,omitempty"`
	EnqueuePerSec float64 `json:"enqueue_per_s,omitempty"`
	Producers     int     `json:"producers,omitempty"`
	P50Ms         float64 `json:"p50_ms,omitempty"`
	P99Ms         float64 `json:"p99_ms,omitempty"`
	MaxMs         float64 `json:"max_ms,omitempty"`
	CallP50Ms     float64 `json:"call_p50_ms,omitempty"`
	CPUPercent    float64 `json:"cpu_pct,omitempty"`
	// ClientCPUUs and ServerCPUUs are the CPU time a task cost the
	// producing process and, on Redis, the server (INFO cpu), over the
	// timed part of the one-by-one enqueue.
	ClientCPUUs float64 `json:"client_cpu_us_per_task,omitempty"`
	ServerCPUUs float64 `json:"server_cpu_us_per_task,omitempty"`
	CancelFinal int     `json:"cancel_final,omitempty"`
	CancelRerun int     `json:"cancel_rerun,omitempty"`
	IdleSeconds float64 `json:"idle_s,omitempty"`
	Seconds     float64 `json:"seconds"`
}

// label names the configuration measured: the system, its backend,
// River's fetch cooldown when set, and the note when given.
func (f figure) label() string {
	s := f.System + "-" + f.Backend
	var extra []string
	if f.FetchCooldown != "" {
		extra = append(extra, "FetchCooldown "+f.FetchCooldown)
	}
	if f.Note != "" {
		extra = append(extra, f.Note)
	}
	if len(extra) > 0 {
		s += " (" + strings.Join(extra, ", ") + ")"
	}
	return s
}

// line is the figure as one human-readable line.
func (f figure) line() string {
	switch f.Scenario {
	case "drain":
		return fmt.Sprintf("%s drain C=%d: %.0f tasks/s (%d tasks in %.2fs; enqueue %.0f tasks/s)",
			f.label(), f.Concurrency, f.TasksPerSec, f.Tasks, f.Seconds, f.EnqueuePerSec)
	case "pickup":
		return fmt.Sprintf("%s pickup C=%d: p50 %.2f ms, p99 %.2f ms, max %.2f ms (%d rounds)",
			f.label(), f.Concurrency, f.P50Ms, f.P99Ms, f.MaxMs, f.Rounds)
	case "idlecpu":
		return fmt.Sprintf("%s idlecpu C=%d: %.2f%% of one core (over %.1fs)",
			f.label(), f.Concurrency, f.CPUPercent, f.IdleSeconds)
	case "enqueue":
		s := fmt.Sprintf("%s enqueue, one call per task, %d producers: %.0f tasks/s (%d tasks in %.2fs; CPU a task: client %.1f µs",
			f.label(), f.Producers, f.EnqueuePerSec, f.Tasks, f.Seconds, f.ClientCPUUs)
		if f.ServerCPUUs > 0 {
			s += fmt.Sprintf(", server %.1f µs", f.ServerCPUUs)
		}
		return s + ")"
	case "cancel":
		return fmt.Sprintf("%s cancel C=%d: p50 %.2f ms, p99 %.2f ms, max %.2f ms to context cancelled (cancel call p50 %.2f ms; %d rounds; then final %d, to run again %d)",
			f.label(), f.Concurrency, f.P50Ms, f.P99Ms, f.MaxMs, f.CallP50Ms, f.Rounds, f.CancelFinal, f.CancelRerun)
	}
	return f.label() + " " + f.Scenario
}

func main() {
	os.Exit(cliMain(os.Args[1:], os.Stdout, os.Stderr))
}

// cliMain runs the command line args and returns the exit code: 0, 1 when
// a run failed, 2 for a usage error.
func cliMain(args []string, stdout, stderr io.Writer) int {
	var cfg config
	var table string
	fs := flag.NewFlagSet("peers", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.System, "system", "", "system to measure: stem, river, asynq or ceiling")
	fs.StringVar(&cfg.URL, "url", "", "backend URL (redis://, postgres://, sqlite://PATH, memory://)")
	fs.StringVar(&cfg.Scenario, "scenario", "", "drain, pickup, idlecpu, cancel or enqueue (one call per task)")
	fs.IntVar(&cfg.Concurrency, "concurrency", 10, "worker concurrency")
	fs.IntVar(&cfg.Tasks, "tasks", 20000, "drain: number of no-op tasks")
	fs.IntVar(&cfg.Batch, "batch", 500, "drain: tasks per enqueue call")
	fs.DurationVar(&cfg.FetchCooldown, "river-fetch-cooldown", 0, "river: Config.FetchCooldown (0: River's default, 100ms)")
	fs.IntVar(&cfg.Rounds, "rounds", 100, "pickup and cancel: counted rounds")
	fs.DurationVar(&cfg.Interval, "interval", 50*time.Millisecond, "pickup and cancel: time from one round's start to the next")
	fs.DurationVar(&cfg.Idle, "idle", 10*time.Second, "idlecpu: how long the worker sits idle")
	fs.StringVar(&cfg.Note, "note", "", "a note that names this configuration in the figure's label (e.g. WAL)")
	fs.IntVar(&cfg.Producers, "producers", 8, "enqueue: goroutines enqueueing one task per call")
	fs.StringVar(&cfg.CPUProfile, "cpuprofile", "", "drain and enqueue: write a CPU profile of the timed part to this file")
	fs.BoolVar(&cfg.JSON, "json", false, "print the figure as one JSON object (the human line goes to stderr)")
	fs.StringVar(&table, "table", "", "print a markdown table of the medians of the -json lines in this file, and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "peers: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if table != "" {
		if err := printTable(table, stdout); err != nil {
			fmt.Fprintf(stderr, "peers: %v\n", err)
			return 1
		}
		return 0
	}
	if err := cfg.validate(); err != nil {
		fmt.Fprintf(stderr, "peers: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	f, err := run(ctx, cfg, logger)
	if err != nil {
		fmt.Fprintf(stderr, "peers: %s %s: %v\n", cfg.System, cfg.Scenario, err)
		return 1
	}
	if cfg.JSON {
		fmt.Fprintln(stderr, f.line())
		b, _ := json.Marshal(f)
		fmt.Fprintln(stdout, string(b))
	} else {
		fmt.Fprintln(stdout, f.line())
	}
	return 0
}

// validate checks the flags of a run.
func (c *config) validate() error {
	switch c.System {
	case "stem", "river", "asynq", "ceiling":
	case "":
		return errors.New("-system is required (stem, river, asynq or ceiling)")
	default:
		return fmt.Errorf("-system %q: want stem, river, asynq or ceiling", c.System)
	}
	if c.URL == "" {
		return errors.New("-url is required")
	}
	switch c.Scenario {
	case "drain", "pickup", "idlecpu", "cancel", "enqueue":
	case "":
		return errors.New("-scenario is required (drain, pickup, idlecpu, cancel or enqueue)")
	default:
		return fmt.Errorf("-scenario %q: want drain, pickup, idlecpu, cancel or enqueue", c.Scenario)
	}
	if c.Concurrency <= 0 || c.Tasks <= 0 || c.Batch <= 0 || c.Rounds <= 0 || c.Producers <= 0 {
		return errors.New("-concurrency, -tasks, -batch, -rounds and -producers must be positive")
	}
	if c.Interval <= 0 || c.Idle <= 0 {
		return errors.New("-interval and -idle must be positive")
	}
	if c.FetchCooldown < 0 {
		return errors.New("-river-fetch-cooldown must not be negative")
	}
	if c.FetchCooldown != 0 && c.System != "river" {
		return errors.New("-river-fetch-cooldown applies to -system river only")
	}
	return nil
}
