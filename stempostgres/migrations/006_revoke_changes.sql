-- stem schema version 6: each revoke row carries the id of the transaction
-- that wrote it last (xid), so that ListChanges reads only the rows written
-- since a cursor, a snapshot of the server's transactions, instead of every
-- row. A trigger sets it on every insert and update, whoever writes (this
-- stem's upserts, a process of an older stem still running, a hand-written
-- UPDATE), so no write path can leave a row out of the changes. The rows
-- already stored take xid 0, which every snapshot sees as committed: they
-- are older than any cursor, and a listing from the cursor "" reads them
-- all. A constant default rewrites nothing; the default of the rows
-- written from now on is the writer's transaction id.
ALTER TABLE _SCHEMA_.stem_revokes ADD COLUMN IF NOT EXISTS xid xid8 NOT NULL DEFAULT '0';
ALTER TABLE _SCHEMA_.stem_revokes ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE OR REPLACE FUNCTION _SCHEMA_.stem_revokes_set_xid() RETURNS trigger LANGUAGE plpgsql AS $stem$
BEGIN
	NEW.xid := pg_catalog.pg_current_xact_id();
	RETURN NEW;
END
$stem$;
DROP TRIGGER IF EXISTS stem_revokes_set_xid ON _SCHEMA_.stem_revokes;
CREATE TRIGGER stem_revokes_set_xid BEFORE INSERT OR UPDATE ON _SCHEMA_.stem_revokes
	FOR EACH ROW EXECUTE FUNCTION _SCHEMA_.stem_revokes_set_xid();
CREATE INDEX IF NOT EXISTS stem_revokes_changes ON _SCHEMA_.stem_revokes (namespace, xid);
