-- stem schema version 2: the name and id columns compare bytes (COLLATE
-- "C"). With the database's collation (C.UTF-8, en_US...), PostgreSQL
-- before 17 compares every key of these indexes with strcoll on copies of
-- the strings; the claim, settle and result statements spend much of
-- their time descending and inserting into these indexes. No statement
-- relies on a linguistic order. The columns' type is unchanged, so the
-- tables are not rewritten; their indexes are rebuilt.
ALTER TABLE _SCHEMA_.stem_tasks
	ALTER COLUMN namespace TYPE text COLLATE "C",
	ALTER COLUMN queue TYPE text COLLATE "C",
	ALTER COLUMN task_id TYPE text COLLATE "C";
ALTER TABLE _SCHEMA_.stem_dead_letters
	ALTER COLUMN namespace TYPE text COLLATE "C",
	ALTER COLUMN queue TYPE text COLLATE "C",
	ALTER COLUMN task_id TYPE text COLLATE "C";
ALTER TABLE _SCHEMA_.stem_results
	ALTER COLUMN namespace TYPE text COLLATE "C",
	ALTER COLUMN id TYPE text COLLATE "C",
	ALTER COLUMN state TYPE text COLLATE "C";
ALTER TABLE _SCHEMA_.stem_revokes
	ALTER COLUMN namespace TYPE text COLLATE "C",
	ALTER COLUMN task_id TYPE text COLLATE "C";
ALTER TABLE _SCHEMA_.stem_control_messages
	ALTER COLUMN namespace TYPE text COLLATE "C";
ALTER TABLE _SCHEMA_.stem_control_replies
	ALTER COLUMN namespace TYPE text COLLATE "C",
	ALTER COLUMN request_id TYPE text COLLATE "C";
ALTER TABLE _SCHEMA_.stem_workers
	ALTER COLUMN namespace TYPE text COLLATE "C",
	ALTER COLUMN id TYPE text COLLATE "C",
	ALTER COLUMN instance TYPE text COLLATE "C";
