package stempostgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// queryAsyncCommit runs sql with args in a transaction of its own that
// commits without waiting for its WAL to reach the disk
// (relaxedCommitSQL: synchronous_commit off, for that transaction only),
// and hands its rows
// to read; all in one round trip. The commit is checked: when it fails,
// so does the call, whatever read saw.
//
// With flush set, the same round trip then commits a second transaction
// that does wait: it takes a transaction id, so its commit flushes the WAL
// up to its own record, which follows sql's. The call then returns once
// sql's effects are durable, and what its commit released (a NOTIFY, row
// locks) left one disk flush sooner.
//
// Two statements use it. A claim: losing a claim to a crash of the server
// only makes its rows claimable again, as a lease's end does, so a claim
// need not wait for the disk (a drain spent a tenth of its time there).
// A revoke's upsert and NOTIFY, with flush: workers hear of it at once.
func queryAsyncCommit(ctx context.Context, pool *pgxpool.Pool, flush bool, sql string, args []any, read func(pgx.Rows) error) (err error) {
	batch := &pgx.Batch{}
	batch.Queue("BEGIN")
	batch.Queue(relaxedCommitSQL)
	batch.Queue(sql, args...)
	batch.Queue("COMMIT")
	if flush {
		batch.Queue("SELECT pg_current_xact_id()") // a synchronous commit: the flush
	}
	br := pool.SendBatch(ctx, batch)
	defer func() { err = errors.Join(err, br.Close()) }()
	for range 2 {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	rows, err := br.Query()
	if err != nil {
		return err
	}
	if err := read(rows); err != nil {
		rows.Close()
		return err
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	tag, err := br.Exec()
	if err != nil {
		return err
	}
	if tag.String() != "COMMIT" {
		return fmt.Errorf("the transaction ended with %s, not COMMIT", tag.String())
	}
	if flush {
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("wait for the commit to reach the disk: %w", err)
		}
	}
	return nil
}
