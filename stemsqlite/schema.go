package stemsqlite

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"

	"github.com/stem-go/stem/stemdriver"
)

// schemaVersion is the schema this code writes, kept in PRAGMA
// user_version. A file at a higher version was written by a newer stem and
// is refused.
const schemaVersion = 4

// migrations[i] takes a file from user_version i to i+1.
var migrations = []string{
	// 0 -> 1: the first schema.
	`
CREATE TABLE stem_tasks (
	id         INTEGER PRIMARY KEY AUTOINCREMENT, -- publish order; the receipt's first half
	namespace  TEXT    NOT NULL,
	queue      TEXT    NOT NULL,
	priority   INTEGER NOT NULL,
	sort_at    INTEGER NOT NULL, -- place in the queue: publish stamp, or NotBefore when delayed (ns)
	state      INTEGER NOT NULL, -- 0 ready, 1 delayed, 2 leased
	visible_at INTEGER NOT NULL, -- when a delayed or leased row is claimable again (ns)
	claims     INTEGER NOT NULL DEFAULT 0, -- claims so far; the receipt's second half
	task_id    TEXT    NOT NULL,
	body       BLOB    NOT NULL  -- the envelope's JSON, as published
);
CREATE INDEX stem_tasks_ready ON stem_tasks (namespace, queue, priority DESC, sort_at, id) WHERE state = 0;
CREATE INDEX stem_tasks_waiting ON stem_tasks (namespace, queue, visible_at) WHERE state <> 0;

CREATE TABLE stem_dead_letters (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	namespace  TEXT    NOT NULL,
	queue      TEXT    NOT NULL,
	task_id    TEXT    NOT NULL,
	body       BLOB    NOT NULL,
	reason     TEXT    NOT NULL,
	created_at INTEGER NOT NULL
);
CREATE INDEX stem_dead_letters_queue ON stem_dead_letters (namespace, queue, id);

CREATE TABLE stem_results (
	namespace  TEXT    NOT NULL,
	id         TEXT    NOT NULL,
	state      TEXT    NOT NULL,
	final      INTEGER NOT NULL, -- 1 when state is succeeded, failed or cancelled
	body       BLOB    NOT NULL, -- the result's JSON
	expires_at INTEGER NOT NULL, -- ns; 0 never
	PRIMARY KEY (namespace, id)
);
CREATE INDEX stem_results_expiry ON stem_results (expires_at) WHERE expires_at > 0;

CREATE TABLE stem_revokes (
	namespace  TEXT    NOT NULL,
	task_id    TEXT    NOT NULL,
	version    INTEGER NOT NULL,
	expires_at INTEGER NOT NULL, -- ns; 0 never
	body       BLOB    NOT NULL, -- the record's JSON, with its stored version
	PRIMARY KEY (namespace, task_id)
);

CREATE TABLE stem_control (
	seq        INTEGER PRIMARY KEY AUTOINCREMENT,
	namespace  TEXT    NOT NULL,
	target     TEXT    NOT NULL, -- a worker id, or '*' for every worker
	body       BLOB    NOT NULL,
	created_at INTEGER NOT NULL
);
CREATE INDEX stem_control_created ON stem_control (created_at);

CREATE TABLE stem_replies (
	seq        INTEGER PRIMARY KEY AUTOINCREMENT,
	namespace  TEXT    NOT NULL,
	request_id TEXT    NOT NULL,
	body       BLOB    NOT NULL,
	created_at INTEGER NOT NULL
);
CREATE INDEX stem_replies_request ON stem_replies (namespace, request_id, seq);
CREATE INDEX stem_replies_created ON stem_replies (created_at);

CREATE TABLE stem_presence (
	namespace  TEXT    NOT NULL,
	worker_id  TEXT    NOT NULL,
	instance   TEXT    NOT NULL,
	body       BLOB    NOT NULL, -- the WorkerInfo's JSON
	expires_at INTEGER NOT NULL,
	PRIMARY KEY (namespace, worker_id)
);
CREATE INDEX stem_presence_expiry ON stem_presence (expires_at);
`,
	// 1 -> 2: tombstones of pruned revoke records, so that a late write of
	// one does not bring it back (stemdriver.RevokeStore).
	`
CREATE TABLE stem_revoke_tombstones (
	namespace  TEXT    NOT NULL,
	task_id    TEXT    NOT NULL,
	version    INTEGER NOT NULL, -- the pruned record's
	expires_at INTEGER NOT NULL, -- ns; the prune's now + stemdriver.RevokeTombstoneRetention
	PRIMARY KEY (namespace, task_id)
);
`,
	// 2 -> 3: the change sequence of revoke records, so that a worker's
	// re-sync reads only what changed since its last (Revokes.ListChanges).
	// Every write of a record sets its seq from the file's one counter,
	// in the write transaction: writers hold the file's write lock from
	// BEGIN to COMMIT, so sequence order is commit order. The epoch, drawn
	// once here, tells a cursor of this file from one of another file (or
	// of this path's file before it was deleted and created again). Rows a
	// version 2 file holds keep seq 0, before every change: no cursor of
	// the new epoch can predate them, since the first listing of an epoch
	// reads every record, so they need no number of their own (and the
	// migration rewrites no row: adding a column with a default does not).
	// The expiry indexes let a re-sync's Prune, which runs with every
	// re-sync, find what expired without reading every record either.
	`
ALTER TABLE stem_revokes ADD COLUMN seq INTEGER NOT NULL DEFAULT 0; -- the record's last write in the change sequence
CREATE INDEX stem_revokes_changes ON stem_revokes (namespace, seq);
CREATE INDEX stem_revokes_expiry ON stem_revokes (namespace, expires_at) WHERE expires_at > 0;
CREATE INDEX stem_revoke_tombstones_expiry ON stem_revoke_tombstones (namespace, expires_at);

CREATE TABLE stem_revoke_changes (
	id    INTEGER PRIMARY KEY CHECK (id = 1), -- one row
	epoch TEXT    NOT NULL, -- random, drawn when the row is created
	seq   INTEGER NOT NULL  -- the last seq given to a revoke record
);
INSERT INTO stem_revoke_changes (id, epoch, seq) VALUES (1, lower(hex(randomblob(16))), 0);
`,
	// 3 -> 4: a write of a revoke record by a writer that does not number
	// it (a stem of schema version 2 still running while a newer one
	// migrated the file, in a rolling upgrade; a hand-written statement)
	// is numbered by a trigger, so that ListChanges lists it like any
	// other. Such a writer leaves seq as it was: 0 on an insert, the old
	// number on an update of the record. This stem's own writes set seq
	// from the counter, always above the number a row held, and fire
	// neither trigger. The trigger's own update of seq fires neither
	// either (an update of seq alone, and SQLite runs no trigger from its
	// own). With the counter's row deleted by hand, seq is left as it was.
	`
CREATE TRIGGER stem_revokes_number_insert AFTER INSERT ON stem_revokes WHEN NEW.seq = 0
BEGIN
	UPDATE stem_revoke_changes SET seq = seq + 1 WHERE id = 1;
	UPDATE stem_revokes SET seq = coalesce((SELECT seq FROM stem_revoke_changes WHERE id = 1), seq)
	WHERE namespace = NEW.namespace AND task_id = NEW.task_id;
END;
CREATE TRIGGER stem_revokes_number_update AFTER UPDATE OF version, expires_at, body ON stem_revokes WHEN NEW.seq = OLD.seq
BEGIN
	UPDATE stem_revoke_changes SET seq = seq + 1 WHERE id = 1;
	UPDATE stem_revokes SET seq = coalesce((SELECT seq FROM stem_revoke_changes WHERE id = 1), seq)
	WHERE namespace = NEW.namespace AND task_id = NEW.task_id;
END;
`,
}

// migrate brings the file's schema to schemaVersion in one write
// transaction, so that processes opening a new file at once create it once:
// the first takes the write lock and creates the tables, the others wait
// for the lock and then find the version already set.
func (s *store) migrate(ctx context.Context, logger *slog.Logger) error {
	return s.writeTx(ctx, logger, "migrate", func(tx *sql.Tx) error {
		var v int
		if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
			return err
		}
		if v > schemaVersion {
			return stemdriver.BadConfig(fmt.Errorf("schema version %d is newer than this stem knows (%d): upgrade stem, or use another file", v, schemaVersion))
		}
		if v < 0 {
			return stemdriver.BadConfig(fmt.Errorf("schema version %d is not one stem writes: is this file another program's?", v))
		}
		if v == schemaVersion {
			return nil
		}
		if v == 0 {
			// A file at version 0 with tables of its own is another
			// program's database: leave it alone.
			var n int
			if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'").Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return fmt.Errorf("the file holds %d tables or indexes of another program and no stem schema version: use a file of stem's own", n)
			}
		}
		for ; v < schemaVersion; v++ {
			if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
				return fmt.Errorf("migrate schema from version %d: %w", v, err)
			}
		}
		_, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", schemaVersion))
		return err
	})
}
