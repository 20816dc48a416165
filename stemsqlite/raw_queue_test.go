package stemsqlite

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/stem-go/stem/internal/systemtest"
)

// Rows another program writes to stem_tasks that are not envelopes, or
// not valid ones, are dead-lettered and never run; they once reached the
// worker as envelopes without an id, whose results could not be written
// (the writer retried them until it gave up, and they came back).
func TestRawGarbageInQueue(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "stem.db")
	u := "sqlite://" + path
	ns := "garbage"
	ctx := context.Background()
	opts := testOpts(ns)
	r := systemtest.Roles{
		Broker:  opened[*Broker](t)(OpenBroker(ctx, u, opts)),
		Results: opened[*Results](t)(OpenResults(ctx, u, opts)),
		Revokes: opened[*Revokes](t)(OpenRevokes(ctx, u, opts)),
		Control: opened[*Control](t)(OpenControl(ctx, u, opts)),
	}
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	systemtest.CheckRawQueueGarbage(t, ns, r, func(body []byte) error {
		_, err := db.ExecContext(ctx, `INSERT INTO stem_tasks (namespace, queue, priority, sort_at, state, visible_at, task_id, body)
VALUES (?1, 'default', 0, 1, 0, 0, 'garbage', ?2)`, ns, body)
		return err
	})
}
