package stempostgres_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stempostgres"
)

// TestPostgresConnectionsTerminatedMidRun is the fault matrix row "broker
// restarted mid-run" for Postgres: while producers enqueue and a worker
// runs, every connection of the test (found by an application_name of its
// own, so no other test's backend is touched) is terminated with
// pg_terminate_backend, again and again for a second, so that the pool
// and the LISTEN connection reconnect into a server that keeps dropping
// them. Producers get errors, never a silent drop: every Enqueue that
// returned nil ran. The worker stays alive and consumes again within 5s
// of the end of the terminations (the figure, with no slack needed: the
// measure includes the producers' own recovery and is well under it), and
// its failed claims while the connections were dropped are few (backoff,
// not a hot loop).
func TestPostgresConnectionsTerminatedMidRun(t *testing.T) {
	t.Parallel()
	base := testutil.PostgresSchema(t)
	pu, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	q := pu.Query()
	app := "stem_outage_" + q.Get("search_path")
	q.Set("application_name", app)
	pu.RawQuery = q.Encode()
	u := pu.String()

	ctx := context.Background()
	opts := stemdriver.Options{Namespace: "outage", Logger: quiet()}
	roles := systemtest.Roles{
		Broker:  opened[*stempostgres.Broker](t)(stempostgres.OpenBroker(ctx, u, opts)),
		Results: opened[*stempostgres.Results](t)(stempostgres.OpenResults(ctx, u, opts)),
	}
	admin, err := pgx.Connect(ctx, testutil.PostgresURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	terminate := func() int {
		var n int
		err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE application_name = $1 AND pid <> pg_backend_pid()`, app).Scan(&n)
		if err != nil {
			t.Fatalf("pg_terminate_backend: %v", err)
		}
		return n
	}
	var killed int
	f := systemtest.RunOutage(t, systemtest.Outage{
		Roles: roles,
		Fault: func(t *testing.T) (time.Time, time.Time) {
			down := time.Now()
			for time.Since(down) < time.Second {
				killed += terminate()
				time.Sleep(20 * time.Millisecond) // the outage itself: terminate every 20ms for a second
			}
			return down, time.Now()
		},
	})
	t.Logf("backends terminated: %d", killed)
	if killed == 0 {
		t.Fatal("no connection of the test was terminated")
	}
	systemtest.CheckOutage(t, f, 5*time.Second, 20)
}
