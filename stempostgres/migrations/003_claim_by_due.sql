-- stem schema version 3: the claim index orders rows by due_at, which a
-- claim does not change, instead of visible_at, which it does (the lease's
-- end): a claim is then a heap-only (HOT) update that writes no index
-- entry. The lower fillfactor leaves room on each page for the claimed
-- version of every row it holds (a claim takes whole pages of rows in one
-- transaction, which cannot reuse the space its own updates free). The
-- new fillfactor applies to pages written from now on.
CREATE INDEX IF NOT EXISTS stem_tasks_ready
	ON _SCHEMA_.stem_tasks (namespace, queue, priority DESC, due_at, id);
DROP INDEX IF EXISTS _SCHEMA_.stem_tasks_claim;
ALTER TABLE _SCHEMA_.stem_tasks SET (fillfactor = 45);
