-- stem schema version 7: indexes of revoke records and tombstones by
-- namespace and expiry. Every worker prunes the expired ones at each revoke
-- re-sync (every 30 s): without them, a prune with nothing to do read every
-- record of the namespace (a million, on every worker), which took back
-- what listing only the changes since the previous re-sync (version 6)
-- saves.
CREATE INDEX IF NOT EXISTS stem_revokes_expiry ON _SCHEMA_.stem_revokes (namespace, expires_at)
	WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS stem_revoke_tombstones_expiry ON _SCHEMA_.stem_revoke_tombstones (namespace, expires_at);
