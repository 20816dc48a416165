package stemcli

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/stem-go/stem/stempostgres"
	"github.com/stem-go/stem/stemurl"
)

func (a *app) migrateCmd() *cobra.Command {
	var print bool
	c := &cobra.Command{
		Use:   "migrate",
		Short: "Create or update the schema of the configured stores",
		Long: `Create or update the tables of every configured store that has a schema
(SQLite, PostgreSQL), then exit. Workers and commands do the same on their
own when they open a store, under a lock, so running this is optional: it is
for deployments that migrate before they roll out, and it fails loudly on a
store that cannot be migrated.

--print writes the SQL for the broker's PostgreSQL URL (its schema from
search_path, default public) to stdout instead, for those who run
migrations themselves; nothing is connected to.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if print {
				return a.printMigrations()
			}
			return a.migrate(cmd.Context())
		},
	}
	c.Flags().BoolVar(&print, "print", false, "print the PostgreSQL migrations of the broker URL's schema instead of applying them")
	return c
}

// printMigrations prints the SQL of the broker URL's Postgres schema.
func (a *app) printMigrations() error {
	u := a.urls()
	if s := strings.ToLower(u.Broker); !strings.HasPrefix(s, "postgres://") && !strings.HasPrefix(s, "postgresql://") {
		return exitf(ExitUsage, "migrate --print: the broker URL %s (from %s) is not a postgres:// URL", stemurl.Redact(u.Broker), u.BrokerFrom)
	}
	schema, err := stempostgres.SchemaFromURL(u.Broker)
	if err != nil {
		return &ExitError{Code: ExitConfig, Err: err}
	}
	fmt.Fprint(a.out, stempostgres.SQL(schema))
	return nil
}

// migrate opens every store (which migrates it) and reports each one.
func (a *app) migrate(ctx context.Context) error {
	o, err := a.open(ctx, stemurl.AllRoles, a.driverOpts())
	if err != nil {
		return err
	}
	defer a.closeStores(o)
	u := o.URLs
	seen := map[string]bool{}
	for _, s := range []struct{ role, url string }{{"broker", u.Broker}, {"result backend", u.Results}, {"revoke store", u.Revokes}} {
		if seen[s.url] {
			continue
		}
		seen[s.url] = true
		fmt.Fprintf(a.out, "%s: %s: up to date\n", s.role, stemurl.Redact(s.url))
	}
	return nil
}
