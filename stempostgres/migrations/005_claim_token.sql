-- stem schema version 5: each claim marks the rows it leases with a token
-- of its own, so that a claim whose reply was lost (its connection cut
-- after the commit) is replayed by the broker's next claim of the queue,
-- which takes back the same rows instead of leaving them held by nobody
-- until their lease ends. No index holds the column, so a claim stays a
-- heap-only (HOT) update; the replay, rare, reads the queue's rows.
-- Adding a column without a default rewrites nothing.
ALTER TABLE _SCHEMA_.stem_tasks ADD COLUMN IF NOT EXISTS claim_token text COLLATE "C";
