-- stem schema version 4: tombstones of pruned revoke records. Prune leaves
-- one per record it deletes (its version), kept until expires_at (the
-- prune's now plus stemdriver.RevokeTombstoneRetention), so that a late
-- upsert of the record, at or below that version, does not bring it back.
CREATE TABLE IF NOT EXISTS _SCHEMA_.stem_revoke_tombstones (
	namespace  text COLLATE "C" NOT NULL,
	task_id    text COLLATE "C" NOT NULL,
	version    bigint      NOT NULL,
	expires_at timestamptz NOT NULL,
	PRIMARY KEY (namespace, task_id)
);
