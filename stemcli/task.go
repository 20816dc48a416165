package stemcli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
	"github.com/stem-go/stem/stemurl"
)

func (a *app) enqueueCmd() *cobra.Command {
	var (
		args       string
		opts       stem.EnqueueOptions
		maxRetries int
		asJSON     bool
	)
	c := &cobra.Command{
		Use:   "enqueue TASK",
		Short: "Enqueue a task and print its id",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, pos []string) error {
			if strings.TrimSpace(pos[0]) == "" {
				return exitf(ExitUsage, "enqueue: empty task name")
			}
			if !json.Valid([]byte(args)) {
				return exitf(ExitUsage, "enqueue: --args is not valid JSON: %q", args)
			}
			if cmd.Flags().Changed("max-retries") {
				if maxRetries < 0 {
					return exitf(ExitUsage, "enqueue: --max-retries must not be negative")
				}
				opts.MaxRetries = &maxRetries
			}
			// A blank queue is one no worker may consume (worker start
			// refuses it); "" is not "the task's queue": leave it out.
			if cmd.Flags().Changed("queue") && strings.TrimSpace(opts.Queue) == "" {
				return exitf(ExitUsage, "enqueue: --queue must not be empty (leave it out for the task's queue)")
			}
			if opts.Countdown < 0 {
				return exitf(ExitUsage, "enqueue: --countdown must not be negative")
			}
			if cmd.Flags().Changed("id") {
				if err := checkTaskID(opts.ID); err != nil {
					return exitf(ExitUsage, "enqueue: --id %q: %v", opts.ID, err)
				}
			}
			ctx := cmd.Context()
			o, err := a.open(ctx, stemurl.RoleBroker|stemurl.RoleResults, a.driverOpts())
			if err != nil {
				return err
			}
			defer a.closeStores(o)
			a.warnMemory(o.URLs.Broker)
			keys, err := a.signingKeys()
			if err != nil {
				return err
			}
			client, err := stem.NewClient(stem.ClientConfig{Broker: o.Broker, Results: o.Results, Registry: a.cfg.Registry,
				SigningKeys: keys})
			if err != nil {
				return err
			}
			task := pos[0]
			if opts.ID != "" {
				a.noteDuplicate(ctx, client, opts.ID)
			}
			id, err := client.Enqueue(ctx, task, json.RawMessage(args), opts)
			if errors.Is(err, stem.ErrPayloadTooLarge) {
				// Bad input, nothing written: a retry cannot help.
				return &ExitError{Code: ExitUsage, Err: err}
			}
			if errors.Is(err, stemdriver.ErrBadConfig) {
				// Refused by the server's ACL or grants: a retry cannot help.
				return &ExitError{Code: ExitConfig, Err: err}
			}
			if err != nil {
				return &ExitError{Code: ExitUnavailable, Err: err}
			}
			if !asJSON {
				fmt.Fprintln(a.out, id)
				return nil
			}
			queue := opts.Queue
			if queue == "" {
				queue = stemtype.DefaultQueue
				if t, ok := a.cfg.Registry.Lookup(task); ok && t.Options.Queue != "" {
					queue = t.Options.Queue
				}
			}
			return writeJSON(a.out, map[string]string{"id": id, "task": task, "queue": queue})
		},
	}
	fl := c.Flags()
	fl.StringVar(&args, "args", "null", "task arguments as JSON")
	fl.StringVar(&opts.Queue, "queue", "", "queue (default: the task's queue, else default)")
	fl.DurationVar(&opts.Countdown, "countdown", 0, "run no earlier than this long from now")
	fl.IntVar(&maxRetries, "max-retries", 0, "override the task's max retries")
	fl.StringVar(&opts.ID, "id", "", "task id, an idempotency key (default: a new random id); see the note on duplicates")
	fl.BoolVar(&asJSON, "json", false, `print {"id","task","queue"} as JSON`)
	return c
}

// checkTaskID refuses a task id that no script means: empty, or holding
// white space or control characters (a quoting slip).
func checkTaskID(id string) error {
	if id == "" {
		return errors.New("must not be empty (leave it out for a new random id)")
	}
	for _, r := range id {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("must not contain white space or control characters (%q)", r)
		}
	}
	return nil
}

// noteDuplicate notes on stderr that task id already has a recorded state:
// enqueueing it again publishes a second message, which a worker runs
// again, but a final state already recorded stays (the first final state
// wins in every result backend), so `task status` keeps reporting the
// first outcome. A lookup that fails is not worth failing the enqueue for.
func (a *app) noteDuplicate(ctx context.Context, client *stem.Client, id string) {
	r, err := client.Status(ctx, id)
	if err != nil {
		return
	}
	if r.State.Final() {
		fmt.Fprintf(a.errw, "stem: note: task %s already %s; it is published again and may run again, but its recorded outcome stays %s\n", id, r.State, r.State)
		return
	}
	fmt.Fprintf(a.errw, "stem: note: task %s is already %s; it is published again (a second message) and may run twice\n", id, r.State)
}

// statusJSON is the --json shape of `task status`.
type statusJSON struct {
	ID       string             `json:"id"`
	Task     string             `json:"task"`
	State    stemtype.State     `json:"state"`
	Attempt  int                `json:"attempt"`
	Result   json.RawMessage    `json:"result"`
	Error    *string            `json:"error"`
	Progress *stemtype.Progress `json:"progress"`
	Meta     map[string]string  `json:"meta"`
}

func (a *app) statusCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "status ID",
		Short: "Print a task's state",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, pos []string) error {
			if strings.TrimSpace(pos[0]) == "" {
				return exitf(ExitUsage, "task status: empty task id")
			}
			ctx := cmd.Context()
			o, err := a.open(ctx, stemurl.RoleResults, a.driverOpts())
			if err != nil {
				return err
			}
			defer a.closeStores(o)
			client, err := stem.NewClient(stem.ClientConfig{Results: o.Results})
			if err != nil {
				return err
			}
			r, err := client.Status(ctx, pos[0])
			if errors.Is(err, stem.ErrNotFound) {
				return fmt.Errorf("task %s: no state recorded in %s (never enqueued here, or expired)", pos[0], stemurl.Redact(o.URLs.Results))
			} else if undecodable(err) {
				// The store answered: retrying cannot mend the record.
				return fmt.Errorf("task %s: %w", pos[0], err)
			} else if errors.Is(err, stemdriver.ErrBadConfig) { // refused by the server's ACL or grants
				return &ExitError{Code: ExitConfig, Err: fmt.Errorf("task %s: %w", pos[0], err)}
			} else if err != nil {
				return &ExitError{Code: ExitUnavailable, Err: fmt.Errorf("task %s: %w", pos[0], err)}
			}
			if !asJSON {
				fmt.Fprintln(a.out, r.State)
				return nil
			}
			out := statusJSON{ID: r.ID, Task: r.Task, State: r.State, Attempt: r.Attempt, Result: r.Result,
				Progress: r.Progress, Meta: r.Meta}
			if out.Meta == nil {
				out.Meta = map[string]string{}
			}
			if len(out.Result) == 0 {
				out.Result = json.RawMessage("null")
			}
			if r.Error != nil {
				out.Error = &r.Error.Message
			}
			return writeJSON(a.out, out)
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, `print {"id","task","state","attempt","result","error","progress","meta"}`)
	return c
}

// undecodable reports whether err says that a stored value does not
// decode as JSON of the expected shape: the store answered, so this is no
// outage to retry (exit 1, not 69).
func undecodable(err error) bool {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	return errors.As(err, &syntax) || errors.As(err, &typ)
}
