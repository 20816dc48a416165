package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/stem-go/stem/internal/testutil"
)

// TestMigratePrint: `stem migrate --print` writes SQL that, applied by
// hand to an empty schema, leaves it as `stem migrate` would (which then
// finds it up to date), and workers and commands run on it; the password
// of the URL appears nowhere in the output.
func TestMigratePrint(t *testing.T) {
	t.Parallel()
	u := testutil.PostgresSchema(t)
	withPW := strings.Replace(u, "postgres@", "postgres:s3cr3t-pw@", 1)
	c := &cluster{t: t, ns: "e2e-" + randomHex(6), url: u}
	c.vars = map[string]string{"STEM_BROKER_URL": withPW, "STEM_NAMESPACE": c.ns}

	sql := c.must("migrate", "--print")
	if strings.Contains(sql, "s3cr3t-pw") || !strings.Contains(sql, "stem_tasks") {
		t.Fatalf("migrate --print:\n%s", sql)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, testutil.PostgresURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("apply the printed SQL: %v", err)
	}
	// The trust-auth server ignores the password; the output shows none.
	out := c.must("migrate")
	if !strings.Contains(out, "up to date") || strings.Contains(out, "s3cr3t-pw") {
		t.Errorf("migrate after the printed SQL:\n%s", out)
	}
	c.vars["STEM_BROKER_URL"] = u
	c.startWorker("w1")
	id := c.enqueue("demo.echo", `{"a":1}`)
	c.waitState(id, "succeeded")

	// --print needs a postgres:// broker URL.
	c.vars["STEM_BROKER_URL"] = "sqlite://" + tmpDir + "/migrate.db"
	if r := c.run("migrate", "--print"); r.code != 64 || !strings.Contains(r.stderr, "postgres://") {
		t.Errorf("migrate --print on SQLite: %s", r)
	}
}
