package stempostgres

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/stem-go/stem/stemdriver"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migration is one numbered file of migrations/.
type migration struct {
	version int
	name    string
	sql     string // with the _SCHEMA_ placeholder
}

// schemaPlaceholder stands for the quoted schema name in migrations/*.sql.
const schemaPlaceholder = "_SCHEMA_"

// migrations returns the embedded migrations in version order.
func migrations() []migration {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		panic(err) // embedded at build time
	}
	var ms []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			panic("stempostgres: migration file without a version: " + e.Name())
		}
		b, err := migrationFiles.ReadFile("migrations/" + e.Name())
		if err != nil {
			panic(err)
		}
		ms = append(ms, migration{version: v, name: e.Name(), sql: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	return ms
}

// SQL returns the SQL that creates (or brings up to date) stem's tables in
// schema, for those who run migrations themselves: the schema, the version
// table stem_migrations, every migration and the row recording its
// version, in one transaction serialised by an advisory lock. Running it on
// a schema at the latest version changes nothing. Migrate runs the same
// statements.
func SQL(schema string) string {
	qs := quoteIdent(schema)
	var b strings.Builder
	b.WriteString("BEGIN;\n")
	fmt.Fprintf(&b, "SELECT pg_advisory_xact_lock(%d);\n", migrateLockKey(schema))
	b.WriteString(preamble(qs))
	for _, m := range migrations() {
		fmt.Fprintf(&b, "\n-- %s\n", m.name)
		b.WriteString(strings.ReplaceAll(m.sql, schemaPlaceholder, qs))
		fmt.Fprintf(&b, "INSERT INTO %s.stem_migrations (version) VALUES (%d) ON CONFLICT DO NOTHING;\n", qs, m.version)
	}
	b.WriteString("COMMIT;\n")
	return b.String()
}

// preamble creates the schema and the version table.
func preamble(qs string) string {
	return "CREATE SCHEMA IF NOT EXISTS " + qs + ";\n" +
		"CREATE TABLE IF NOT EXISTS " + qs + ".stem_migrations (\n" +
		"\tversion    integer     PRIMARY KEY,\n" +
		"\tapplied_at timestamptz NOT NULL DEFAULT now()\n);\n"
}

// migrateLockKey is the advisory lock that serialises migrations of
// schema, so that workers starting at once apply each migration once.
func migrateLockKey(schema string) int64 {
	return int64(fnv64("stem:migrate:" + schema))
}

// fnv64 is the 64-bit FNV-1a hash of s.
func fnv64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// Migrate creates stem's tables in the schema of url (its search_path
// option, default public), creating the schema if missing, and applies the
// migrations it lacks, under an advisory lock so that several processes may
// run it at once. The Open functions run it themselves; a deployment that
// manages its schema separately runs it once (the stem migrate command) or
// applies SQL's output.
func Migrate(ctx context.Context, url string) error {
	cfg, err := parseConfig(url, defaultOptions())
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg.connConfig())
	if err != nil {
		return cfg.errorf(err, "migrate: connect")
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return migrateConn(ctx, conn, cfg)
}

// migrateConn applies the missing migrations on conn in one transaction.
func migrateConn(ctx context.Context, conn interface {
	Begin(context.Context) (pgx.Tx, error)
}, cfg *config) error {
	qs := quoteIdent(cfg.schema)
	tx, err := conn.Begin(ctx)
	if err != nil {
		return cfg.errorf(err, "migrate schema %q", cfg.schema)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrateLockKey(cfg.schema)); err != nil {
		return cfg.errorf(err, "migrate schema %q: lock", cfg.schema)
	}
	// Skip the DDL when the schema is up to date: most opens find it so,
	// and CREATE SCHEMA needs a privilege a worker's role may lack.
	latest := 0
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", qs+".stem_migrations").Scan(&exists); err != nil {
		return cfg.errorf(err, "migrate schema %q", cfg.schema)
	}
	if exists {
		if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+qs+".stem_migrations").Scan(&latest); err != nil {
			return cfg.errorf(err, "migrate schema %q: read version", cfg.schema)
		}
	} else if _, err := tx.Exec(ctx, preamble(qs)); err != nil {
		return cfg.errorf(err, "migrate schema %q: create", cfg.schema)
	}
	ms := migrations()
	if latest > ms[len(ms)-1].version {
		return stemdriver.BadConfig(fmt.Errorf("stem: postgres at %s: schema %q is at version %d, newer than this stem knows (%d): upgrade stem",
			cfg.shown, cfg.schema, latest, ms[len(ms)-1].version))
	}
	applied := false
	for _, m := range ms {
		if m.version <= latest {
			continue
		}
		if _, err := tx.Exec(ctx, strings.ReplaceAll(m.sql, schemaPlaceholder, qs)); err != nil {
			return cfg.errorf(err, "migrate schema %q: apply %s", cfg.schema, m.name)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO "+qs+".stem_migrations (version) VALUES ($1)", m.version); err != nil {
			return cfg.errorf(err, "migrate schema %q: record %s", cfg.schema, m.name)
		}
		applied = true
	}
	if err := tx.Commit(ctx); err != nil {
		return cfg.errorf(err, "migrate schema %q: commit", cfg.schema)
	}
	if applied {
		cfg.logger.Info("stem: postgres: migrated schema", "schema", cfg.schema, "version", ms[len(ms)-1].version)
	}
	return nil
}

// quoteIdent quotes s as an SQL identifier.
func quoteIdent(s string) string {
	return pgx.Identifier{s}.Sanitize()
}
