-- stem schema version 1: the broker's tasks and dead letters, results,
-- revokes, and the control plane's messages, replies and presence. Every
-- table has a namespace column: one schema holds any number of stem
-- deployments. _SCHEMA_ stands for the quoted schema name.

-- stem_tasks holds the broker's messages, ready, delayed and leased.
-- visible_at is when the row may next be claimed: its due time while it
-- waits, the end of its lease while it is held. The claim index orders
-- rows as Claim reads them, so held rows sort after the ready ones of
-- their priority. claims counts the claims of this message (its receipt
-- is id.claims); leased says a consumer holds it (until its lease expires
-- and another claim takes it). due_at keeps the publish (or due) order for
-- sorting one claim's rows.
CREATE TABLE IF NOT EXISTS _SCHEMA_.stem_tasks (
	id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	namespace  text        NOT NULL,
	queue      text        NOT NULL,
	priority   integer     NOT NULL DEFAULT 0,
	visible_at timestamptz NOT NULL,
	due_at     timestamptz NOT NULL,
	claims     integer     NOT NULL DEFAULT 0,
	leased     boolean     NOT NULL DEFAULT false,
	task_id    text        NOT NULL,
	payload    bytea       NOT NULL
) WITH (fillfactor = 80);
CREATE INDEX IF NOT EXISTS stem_tasks_claim
	ON _SCHEMA_.stem_tasks (namespace, queue, priority DESC, visible_at, id);

-- stem_dead_letters keeps the raw messages DeadLetter removed, with why.
CREATE TABLE IF NOT EXISTS _SCHEMA_.stem_dead_letters (
	id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	namespace  text        NOT NULL,
	queue      text        NOT NULL,
	task_id    text        NOT NULL,
	payload    bytea       NOT NULL,
	reason     text        NOT NULL,
	dead_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS stem_dead_letters_ns
	ON _SCHEMA_.stem_dead_letters (namespace, queue, id);

-- stem_results holds one record per task (the JSON TaskResult in body);
-- expires_at is null for results kept forever.
CREATE TABLE IF NOT EXISTS _SCHEMA_.stem_results (
	namespace  text        NOT NULL,
	id         text        NOT NULL,
	state      text        NOT NULL,
	body       bytea       NOT NULL,
	expires_at timestamptz,
	PRIMARY KEY (namespace, id)
) WITH (fillfactor = 80);

-- stem_revokes holds the revoke records (JSON RevokeRecord in body; the
-- version column is the one that applies).
CREATE TABLE IF NOT EXISTS _SCHEMA_.stem_revokes (
	namespace  text        NOT NULL,
	task_id    text        NOT NULL,
	version    bigint      NOT NULL,
	body       bytea       NOT NULL,
	expires_at timestamptz,
	PRIMARY KEY (namespace, task_id)
);

-- stem_control_messages holds control messages too large for a NOTIFY
-- payload for a minute; the notification carries the row's id.
CREATE TABLE IF NOT EXISTS _SCHEMA_.stem_control_messages (
	id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	namespace  text        NOT NULL,
	targets    text[]      NOT NULL,
	body       bytea       NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
);

-- stem_control_replies holds control replies by request id for at least
-- two minutes.
CREATE TABLE IF NOT EXISTS _SCHEMA_.stem_control_replies (
	id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	namespace  text        NOT NULL,
	request_id text        NOT NULL,
	body       bytea       NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS stem_control_replies_request
	ON _SCHEMA_.stem_control_replies (namespace, request_id, id);

-- stem_workers is the control plane's presence: one row per live worker id.
CREATE TABLE IF NOT EXISTS _SCHEMA_.stem_workers (
	namespace  text        NOT NULL,
	id         text        NOT NULL,
	instance   text        NOT NULL,
	info       bytea       NOT NULL,
	expires_at timestamptz NOT NULL,
	PRIMARY KEY (namespace, id)
);
