// Package stemcli is the stem command tree, importable so that a Go program
// with its own tasks embeds the same CLI: `myapp worker start` runs its
// handlers and `myapp worker revoke` controls them.
//
//	func main() {
//		reg := stem.NewRegistry()
//		// register tasks ...
//		os.Exit(stemcli.Main(stemcli.Config{Registry: reg}, os.Args[1:]))
//	}
//
// Commands write to the configured writers, so they are tested on their
// exact output. Exit codes (DESIGN §5): 0 success, 64 usage error (among
// them a connection or namespace flag given empty or blank), 69 the
// broker or revoke store cannot be reached (nothing was published), 70 a
// worker replied with an error or with a reply that cannot be decoded, a
// targeted worker did not reply, or no worker replied at all, 78
// configuration error (an unknown or not yet supported URL scheme, a
// malformed URL, an unknown URL option, a bad database number, a revoke
// store that cannot be durable, an unknown STEM_LOG_LEVEL, a blank
// STEM_NAMESPACE, a command the server's ACL or grants refuse; for
// revoke also a result backend URL that can never
// work, although a result backend that cannot be reached is done
// without), 1 any other failure. Scripts may retry on 69, never on 64 or
// 78.
package stemcli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"go.opentelemetry.io/otel/trace"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/isolated"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemredis"
	"github.com/stem-go/stem/stemtype"
	"github.com/stem-go/stem/stemurl"
)

// Exit codes of the stem CLI (sysexits.h names in brackets).
const (
	ExitOK          = 0
	ExitFailure     = 1
	ExitUsage       = 64 // EX_USAGE
	ExitUnavailable = 69 // EX_UNAVAILABLE
	ExitSoftware    = 70 // EX_SOFTWARE: worker error, missing or no reply
	ExitConfig      = 78 // EX_CONFIG: configuration error
)

// ExitError carries the exit code of a failed command.
type ExitError struct {
	Code int
	Err  error
}

// Error returns the wrapped error's text.
func (e *ExitError) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *ExitError) Unwrap() error { return e.Err }

func exitf(code int, format string, args ...any) error {
	return &ExitError{Code: code, Err: fmt.Errorf(format, args...)}
}

// Config configures the command tree.
type Config struct {
	// Registry holds the tasks `worker start` runs and `enqueue` takes
	// defaults from. Required.
	Registry *stem.Registry
	// Name is the binary's name in help texts. Default: "stem".
	Name string
	// Stdout and Stderr default to os.Stdout and os.Stderr.
	Stdout, Stderr io.Writer
	// Getenv defaults to os.Getenv.
	Getenv func(string) string
	// Resolver opens backends; default stemurl.New().
	Resolver *stemurl.Resolver
	// Demo, when set, adds `demo`, a self-contained tour that registers
	// its tasks into a registry of its own with this function.
	Demo func(*stem.Registry)
	// Executor, when set, builds the executor `worker start` gives its
	// worker for isolated tasks, and the function that stops it. Default:
	// when the registry has isolated tasks, an isolated.Pool of
	// --concurrency child processes of this binary (Main serves their
	// role).
	Executor func(reg *stem.Registry) (stem.Executor, func(), error)
	// TracerProvider, when set, makes `worker start` trace every run
	// (stem.WorkerConfig.TracerProvider). The stock binary sets none.
	TracerProvider trace.TracerProvider
}

// app is the state shared by the commands of one invocation.
type app struct {
	cfg                             Config
	out, errw                       io.Writer
	broker, backend, revoke, nsFlag string
}

// New returns the root command.
func New(cfg Config) *cobra.Command {
	if cfg.Name == "" {
		cfg.Name = "stem"
	}
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	if cfg.Getenv == nil {
		cfg.Getenv = os.Getenv
	}
	if cfg.Resolver == nil {
		cfg.Resolver = stemurl.New()
	}
	a := &app{cfg: cfg, out: cfg.Stdout, errw: cfg.Stderr}
	root := &cobra.Command{
		Use:           cfg.Name,
		Short:         "Celery-style background tasks for Go, with a live worker control plane",
		SilenceUsage:  true,
		SilenceErrors: true,
		Long: cfg.Name + ` enqueues tasks, runs workers and controls them live.

Connections come from --broker, --backend and --revoke-store, else from
STEM_BROKER_URL, STEM_RESULT_BACKEND_URL and STEM_REVOKE_STORE_URL (the
revoke store falls back to the result backend's URL, then the broker's).
With nothing set, every store is the embedded default, one SQLite file that
every command and worker of this user on this host shares, so a worker
started in one terminal is reached from another:

  ` + stemurl.Default(cfg.Getenv) + `

It is ` + stemurl.DefaultFile + ` in $` + stemurl.EnvHome + `, else in $XDG_STATE_HOME/stem, else in
~/.local/state/stem; the directory is created on first use.

With STEM_SIGNING_KEY (keys separated by commas, the first signs) or
STEM_SIGNING_KEY_FILE (one key a line), tasks, control commands and revoke
records are signed, and workers act only on what is signed. Without a key,
anyone who can write to the broker can revoke and terminate every task.
See docs/signing.md.`,
	}
	root.SetOut(cfg.Stdout)
	root.SetErr(cfg.Stderr)
	// Configuration read from the environment is checked before any
	// command runs, so that a typo fails loudly instead of being ignored.
	root.PersistentPreRunE = func(c *cobra.Command, _ []string) error {
		if err := a.checkConnFlags(c); err != nil {
			return err
		}
		if _, err := a.logLevel("info"); err != nil {
			return err
		}
		if _, err := a.signingKeys(); err != nil {
			return err
		}
		return a.checkNamespaceEnv()
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &ExitError{Code: ExitUsage, Err: fmt.Errorf("%w\nSee '%s --help'.", err, c.CommandPath())}
	})
	pf := root.PersistentFlags()
	pf.StringVar(&a.broker, "broker", "", "broker URL (default $STEM_BROKER_URL, else the embedded default)")
	pf.StringVar(&a.backend, "backend", "", "result backend URL (default $STEM_RESULT_BACKEND_URL, else the broker URL)")
	pf.StringVar(&a.revoke, "revoke-store", "", "revoke store URL (default $STEM_REVOKE_STORE_URL, $STEM_RESULT_BACKEND_URL, $STEM_BROKER_URL)")
	pf.StringVar(&a.nsFlag, "namespace", "", "namespace (default $STEM_NAMESPACE, else "+stemtype.DefaultNamespace+")")

	worker := &cobra.Command{Use: "worker", Short: "Run and control workers"}
	worker.AddCommand(a.pingCmd(), a.inspectCmd(), a.statsCmd(), a.revokeCmd(), a.startCmd(), a.fleetCmd(), a.shutdownCmd())
	task := &cobra.Command{Use: "task", Short: "Read task state"}
	task.AddCommand(a.statusCmd(), a.whereCmd())
	queue := a.queueCmd()
	root.AddCommand(worker, task, queue, a.enqueueCmd(), a.benchCmd(), a.migrateCmd())
	if cfg.Demo != nil {
		root.AddCommand(a.demoCmd())
	}
	// A group run without a subcommand prints its help; with an unknown
	// one, it is a usage error.
	group := func(g *cobra.Command) {
		g.Args = cobra.ArbitraryArgs
		g.RunE = func(c *cobra.Command, args []string) error {
			if len(args) > 0 {
				return exitf(ExitUsage, "unknown command %q for %q\nSee '%s --help'.", args[0], c.CommandPath(), c.CommandPath())
			}
			return c.Help()
		}
	}
	for _, g := range []*cobra.Command{root, worker, task, queue} {
		group(g)
	}
	var strict func(*cobra.Command)
	strict = func(c *cobra.Command) {
		if c.Args == nil {
			c.Args = cobra.NoArgs
		}
		for _, sub := range c.Commands() {
			strict(sub)
		}
	}
	strict(root)
	// cobra adds its help and completion commands when the tree first
	// runs; adding them now lets every argument validator in the tree,
	// theirs included, report a usage error by type.
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		switch c.Name() {
		case "completion":
			group(c) // cobra prints its help for an unknown shell, exit 0
		case "help":
			helpTopics(c)
		}
	}
	var typed func(*cobra.Command)
	typed = func(c *cobra.Command) {
		if c.Args != nil {
			c.Args = usageArgs(c.Args)
		}
		for _, sub := range c.Commands() {
			typed(sub)
		}
	}
	typed(root)
	a.completeWorkers(root)
	return root
}

// helpTopics makes cobra's help command refuse a topic that names no
// command as a usage error: cobra prints the usage and succeeds.
func helpTopics(help *cobra.Command) {
	show := help.Run
	help.Run = nil
	help.RunE = func(c *cobra.Command, args []string) error {
		if cmd, rest, err := c.Root().Find(args); err != nil || cmd == nil || len(rest) > 0 {
			return exitf(ExitUsage, "unknown help topic %q\nSee '%s --help'.", strings.Join(args, " "), c.Root().CommandPath())
		}
		show(c, args)
		return nil
	}
}

// usageArgs makes an argument validator's error an *ExitError with
// ExitUsage, its text unchanged.
func usageArgs(validate cobra.PositionalArgs) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if err := validate(c, args); err != nil {
			return &ExitError{Code: ExitUsage, Err: err}
		}
		return nil
	}
}

// Main runs the command tree on args and returns the process exit code,
// printing the error (if any) on stderr.
//
// Main is a program's entry point, so it also routes go-redis's own
// package-level log lines (dial retries) to the CLI's logger at debug level:
// the CLI reports connection failures itself, once and clearly.
func Main(cfg Config, args []string) int {
	// A child process of an isolated.Pool serves its tasks and exits here,
	// before any command runs: the program builds cfg.Registry the same way
	// in both roles.
	isolated.ServeIfChild(cfg.Registry)
	cmd := New(cfg)
	stemredis.SetLibraryLogf(func(format string, v ...any) {
		// Only at STEM_LOG_LEVEL=debug: the CLI reports connection
		// failures itself.
		if strings.EqualFold(os.Getenv("STEM_LOG_LEVEL"), "debug") {
			fmt.Fprintf(cmd.ErrOrStderr(), "go-redis: "+format+"\n", v...)
		}
	})
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return exitCode(cmd.ErrOrStderr(), err)
}

func exitCode(w io.Writer, err error) int {
	if err == nil {
		return ExitOK
	}
	var ee *ExitError
	code := ExitFailure
	if errors.As(err, &ee) {
		code = ee.Code
	}
	fmt.Fprintln(w, "stem: "+strings.TrimPrefix(err.Error(), "stem: "))
	return code
}

// connFlags are the persistent flags that choose where a command goes.
var connFlags = []string{"broker", "backend", "revoke-store", "namespace"}

// checkConnFlags refuses a connection or namespace flag given with an
// empty or blank value (a script's --broker "$UNSET"), a usage error as a
// blank --worker or --task is: taken for "not given", it would send the
// command to the variable's store, to the in-process default or to the
// default namespace without a word.
func (a *app) checkConnFlags(c *cobra.Command) error {
	for _, name := range connFlags {
		f := c.Flags().Lookup(name)
		if f != nil && f.Changed && strings.TrimSpace(f.Value.String()) == "" {
			return exitf(ExitUsage, "--%s must not be empty (leave it out to use $%s or the default)\nSee '%s --help'.",
				name, connFlagEnv[name], c.CommandPath())
		}
	}
	return nil
}

// connFlagEnv names the variable each of connFlags overrides.
var connFlagEnv = map[string]string{
	"broker":       stemurl.EnvBroker,
	"backend":      stemurl.EnvResults,
	"revoke-store": stemurl.EnvRevokeStore,
	"namespace":    stemurl.EnvNamespace,
}

// checkNamespaceEnv refuses a STEM_NAMESPACE of blanks: it names no
// deployment (configuration error, exit 78). Empty is unset.
func (a *app) checkNamespaceEnv() error {
	if ns := a.cfg.Getenv(stemurl.EnvNamespace); ns != "" && strings.TrimSpace(ns) == "" && a.nsFlag == "" {
		return exitf(ExitConfig, "%s=%q: want a namespace name, or leave it unset for %q", stemurl.EnvNamespace, ns, stemtype.DefaultNamespace)
	}
	return nil
}

func (a *app) namespace() string {
	if a.nsFlag != "" {
		return a.nsFlag
	}
	if ns := a.cfg.Getenv(stemurl.EnvNamespace); ns != "" {
		return ns
	}
	return stemtype.DefaultNamespace
}

// urls resolves the connection URLs from the flags and the environment
// (stemurl.Resolve: a flag wins over its variable).
func (a *app) urls() stemurl.URLs {
	return stemurl.Resolve(a.cfg.Getenv, stemurl.Flags{Broker: a.broker, Results: a.backend, Revokes: a.revoke})
}

func (a *app) driverOpts() stemdriver.Options {
	return stemdriver.Options{Namespace: a.namespace(), Logger: a.logger("warn")}
}

// envLogLevel sets the level of the CLI's and the worker's log.
const envLogLevel = "STEM_LOG_LEVEL"

// logLevels are the values envLogLevel accepts, in any case.
var logLevels = map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}

// logLevel returns the level $STEM_LOG_LEVEL names, else def. A value that
// names no level is a configuration error (exit 78), never silently info.
func (a *app) logLevel(def string) (slog.Level, error) {
	name := a.cfg.Getenv(envLogLevel)
	if name == "" {
		name = def
	}
	level, ok := logLevels[strings.ToLower(name)]
	if !ok {
		return 0, exitf(ExitConfig, "%s=%q: want one of debug, info, warn, error", envLogLevel, name)
	}
	return level, nil
}

// logger logs at $STEM_LOG_LEVEL, else at def, to stderr. The root
// command's pre-run has refused an unknown level before any command runs.
func (a *app) logger(def string) *slog.Logger {
	level, err := a.logLevel(def)
	if err != nil {
		level = slog.LevelInfo // not reached: see PersistentPreRunE
	}
	return slog.New(slog.NewTextHandler(a.errw, &slog.HandlerOptions{Level: level}))
}

// open opens exactly roles, from the URLs the flags and the environment
// resolve to, with opts: the one place the CLI opens stores. Its error
// carries the exit code (see openErr). Close the result with closeStores.
func (a *app) open(ctx context.Context, roles stemurl.Role, opts stemdriver.Options) (*stemurl.Opened, error) {
	return openStores(ctx, a.cfg.Resolver, a.urls(), roles, opts)
}

// openStores opens roles from u with r, turning a failure into its exit
// code (openErr).
func openStores(ctx context.Context, r *stemurl.Resolver, u stemurl.URLs, roles stemurl.Role, opts stemdriver.Options) (*stemurl.Opened, error) {
	o, err := r.Open(ctx, u, roles, opts)
	if err != nil {
		return nil, openErr(err)
	}
	return o, nil
}

// openErr gives the failure to open stores its exit code: 78 for a
// configuration error (stemdriver.ErrBadConfig: an unknown scheme, a
// malformed URL, a revoke store that cannot be durable; a retry cannot
// help), else 69 (a store cannot be reached). stemurl's errors show URLs
// redacted.
func openErr(err error) error {
	code := ExitUnavailable
	if errors.Is(err, stemdriver.ErrBadConfig) {
		code = ExitConfig
	}
	return &ExitError{Code: code, Err: err}
}

// closeStores closes o and reports any error of it on stderr: the command
// has done its work (or failed for its own reason) by then, so its exit
// code stands, but a store that did not close cleanly is never silent.
func (a *app) closeStores(o *stemurl.Opened) {
	a.warnClose("", o.Close())
}

// warnClose reports on stderr the error, if any, of closing what ("" when
// err names it), for the reason closeStores gives.
func (a *app) warnClose(what string, err error) {
	if err == nil {
		return
	}
	msg := strings.TrimPrefix(err.Error(), "stem: ")
	if what != "" {
		msg = "close " + what + ": " + msg
	}
	fmt.Fprintf(a.errw, "stem: warning: %s\n", msg)
}

func (a *app) warnMemory(url string) {
	if strings.HasPrefix(strings.ToLower(url), "memory:") {
		fmt.Fprintf(a.errw, "stem: note: %s is in-process only; set STEM_BROKER_URL (e.g. redis://127.0.0.1:6379/0) to reach workers in other processes\n", stemurl.Redact(url))
	}
}

// noteStores notes on stderr each store a worker's stats name that differs
// from the one this command resolved: a CLI and a fleet configured apart
// (say, revokes written where no worker reads them) are spotted at once.
func (a *app) noteStores(r *stem.Replies) {
	u := a.urls()
	mine := u.Stores()
	for _, rep := range stem.Decode[stemtype.StatsReply](r) {
		s := rep.Payload
		if rep.Err != nil || s.Stores == nil {
			continue
		}
		for _, d := range []struct{ what, theirs, mine, from string }{
			{"broker", s.Stores.Broker, mine.Broker, ""},
			{"result backend", s.Stores.Results, mine.Results, ""},
			{"revoke store", s.Stores.Revokes, mine.Revokes, " (from " + u.RevokesFrom + ")"},
		} {
			if d.theirs != d.mine {
				fmt.Fprintf(a.errw, "stem: note: worker %s uses %s %s; this command resolved %s%s\n", rep.WorkerID, d.what, d.theirs, d.mine, d.from)
			}
		}
	}
}
