package stemcli

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/stem-go/stem/stemurl"
)

// completeTimeout bounds the look-up of live workers for a completion: a
// shell waits for it at every tab.
const completeTimeout = 2 * time.Second

// completeWorkers registers, on every command of the tree that takes
// --worker, a completion of the flag with the ids of the live workers of
// the namespace, from their presence announcements (no broadcast). It
// completes nothing, without a word, when the store cannot be reached.
func (a *app) completeWorkers(root *cobra.Command) {
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Flags().Lookup("worker") != nil {
			_ = c.RegisterFlagCompletionFunc("worker", a.workerIDs)
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// workerIDs returns the live workers' ids that start with toComplete and
// are not given already.
func (a *app) workerIDs(c *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	ctx, cancel := context.WithTimeout(context.Background(), completeTimeout)
	defer cancel()
	opts := a.driverOpts()
	opts.Logger = discardLogger()
	o, err := a.cfg.Resolver.Open(ctx, a.urls(), stemurl.RoleControl, opts)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	defer o.Close()
	ws, err := o.Control.Workers(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	given, _ := c.Flags().GetStringArray("worker")
	var out []cobra.Completion
	for _, w := range ws {
		if strings.HasPrefix(w.ID, toComplete) && !slices.Contains(given, w.ID) {
			out = append(out, cobra.CompletionWithDesc(w.ID, w.Host))
		}
	}
	slices.Sort(out)
	return out, cobra.ShellCompDirectiveNoFileComp
}

// discardLogger logs nothing: a completion must print only completions.
func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
