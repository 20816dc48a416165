package stempostgres

import (
	"context"
	"log/slog"
	"testing"

	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
)

// Rows another program writes to stem_tasks that are not envelopes, or
// not valid ones, are dead-lettered and never run; a valid-looking one
// without an id once reached the worker, whose result could not be
// written.
func TestRawGarbageInQueue(t *testing.T) {
	t.Parallel()
	u := testutil.PostgresSchema(t)
	ns := "garbage"
	ctx := context.Background()
	opts := stemdriver.Options{Namespace: ns, Logger: slog.New(slog.DiscardHandler)}
	roles, b, _ := openRawRoles(t, u, opts)
	systemtest.CheckRawQueueGarbage(t, ns, roles, func(body []byte) error {
		_, err := b.s.pool.Exec(ctx, `INSERT INTO `+quoteIdent(b.s.schema)+`.stem_tasks (namespace, queue, priority, visible_at, due_at, task_id, payload)
VALUES ($1, 'default', 0, now(), now(), 'garbage', $2)`, ns, body)
		return err
	})
}
