// Package stempostgres is stem's Postgres backend: a broker, a result
// backend, a revoke store and a control transport, each opened from a URL,
// sharing one connection pool per URL in a process.
//
// # URL
//
//	postgres://[user[:password]@]host[:port]/database[?option=value...]
//	postgresql://...
//
// The options are pgx's (sslmode, sslrootcert, sslcert, sslkey,
// connect_timeout, pool_max_conns, application_name, ...) plus two of
// stem's, which pgx never sees:
//   - search_path=NAME: the one schema stem's tables live in (default
//     public); it is created when missing. The name is taken as written,
//     quoted: MyApp and myapp are two schemas, and a misspelt name makes
//     a new, empty one (the worker logs the schema it migrated). Every statement names it, so the
//     session's own search_path does not matter. A deployment is a
//     namespace in one database and schema: two schemas never see each
//     other's tasks, results, revokes, commands, replies or workers.
//   - result_ttl=DURATION: how long a result is kept after its last write
//     (default 24h; 0 keeps results forever).
//
// TLS follows sslmode as pgx parses it. A URL whose host is not loopback
// and whose sslmode lets the connection fall back to plaintext (disable,
// allow, prefer, or none given) is opened with a warning in the log. The
// password is never printed: errors and logs show the URL without user
// information or query. Connections carry application_name=stem unless the
// URL sets another.
//
// # Schema
//
// The Open functions migrate the schema on their first use in a process,
// under an advisory lock, so that workers starting at once are safe;
// Migrate does the same alone, and SQL prints the statements for those who
// run migrations themselves. The version table is stem_migrations.
// Version 2 (byte-order key columns) rebuilds every index of stem's tables
// and version 3 builds the new claim index, version 6 the revoke
// table's change index, and version 7 the indexes of revoke records and
// tombstones by expiry (so that the prune of every re-sync reads only what
// expired), each under a lock that blocks the tables' writers
// while it works: on a deployment with millions of
// results, run stem migrate at a quiet moment, before the rollout. A
// worker of an older stem keeps running on a migrated schema (its claims
// then sort the queue's rows, which is slower), and refuses to start on
// one (schema newer than it knows). Tables, each with a namespace column:
//   - stem_tasks: one row per message (bytea JSON envelope), claimed with
//     UPDATE ... WHERE id = ANY(ARRAY(SELECT ... FOR UPDATE SKIP LOCKED
//     LIMIT n)), leased until the server's now() plus the lease, and
//     deleted by Ack, so that the table holds only unfinished work. The
//     claim index orders rows by (namespace, queue, priority, due_at, id);
//     the lease's end (visible_at) is in no index, so a claim is a
//     heap-only update that writes no index entry, and the table's
//     fillfactor (45) leaves room on each page for the claimed versions.
//     Key columns compare bytes (COLLATE "C").
//   - stem_dead_letters: messages removed by DeadLetter, with the reason.
//   - stem_results: one row per task, upserted with final states final in
//     the statement's WHERE; expired rows are deleted once a minute.
//   - stem_revokes: one row per namespace and task, upserted with version
//     greatest(stored+1, proposed). Each row carries the id of the
//     transaction that wrote it last (xid, set by a trigger on every insert
//     and update, whoever writes), indexed with the namespace, for the
//     change listing below (schema version 6; the rows stored before it
//     carry 0 and are listed from the cursor "" only).
//   - stem_revoke_tombstones: the version of each revoke record Prune
//     deleted, for stemdriver.RevokeTombstoneRetention, so that a late
//     upsert of the record does not bring it back (schema version 4).
//   - stem_control_messages, stem_control_replies, stem_workers: the
//     control plane's large messages, replies and presence.
//
// # Revoke changes
//
// (*Revokes).ListChanges (stemdriver.RevokeChangeLister) lets a worker's
// periodic re-sync read only the revoke records written since its previous
// one, not every record: with 100,000 stored and nothing changed, one
// index probe instead of reading and decoding them all (BenchmarkRevokeResync).
// A sequence number cannot serve as the cursor on Postgres: numbers are
// taken in one order and committed in another, so a listing could pass
// number 11 while number 10's transaction is still open, and miss it for
// ever. The cursor is instead the listing statement's own snapshot
// (pg_current_snapshot: which transactions had finished, which were in
// progress), and the next listing returns the rows whose writer's
// transaction that snapshot did not see, whatever their ids. A row is
// listed once per write. The cursor also names the server (its system
// identifier and timeline) and the table (its oid), so a cursor of another
// server, of one since promoted or recovered to a point in time (which
// may give again the transaction ids it never received), or of a
// re-created schema, like "" or one that does not parse, lists every
// record; so does every listing on a standby. A transaction left open for
// long (anywhere on the server) does not make a listing miss anything, but
// makes each one read the index entries written since it began. This needs
// PostgreSQL 13 or later (xid8, pg_current_snapshot), and no privilege
// beyond SELECT on stem_revokes and the EXECUTE on pg_control_system,
// pg_walfile_name, pg_current_wal_insert_lsn, pg_is_in_recovery and
// pg_current_snapshot that every user has by default. A server that
// refuses the listing (one that lacks those functions, or revoked EXECUTE
// on them) gets every record read at each re-sync instead, as before
// schema version 6, with a warning logged once.
//
// A role that may not create tables (a producer's, a worker's) opens a
// schema migrated beforehand without running any DDL; docs/security.md
// lists the tables each role (producer, worker, operator) reads and
// writes, with the GRANTs. NOTIFY needs no privilege in Postgres, so the
// roles do not keep a producer or worker from sending workers a control
// command (signed messages keep out only whoever lacks the key, which
// producers and workers hold too).
//
// # Transactional enqueue
//
// (*Broker).InTx and (*Results).InTx return views that write in the
// caller's pgx.Tx, so a task enqueued through them exists if and only if the
// transaction commits (see the example).
//
// # One round trip where roles meet
//
// Roles opened on one URL in one process share a pool, and where two of
// them write together they do it in one atomic step (the optional
// interfaces of package stemdriver):
//   - (*Broker).PutAck: a worker's batch of outcomes and its
//     acknowledgements, one pipelined implicit transaction;
//   - (*Broker).PutPublish: a client's pending states and its tasks, one
//     pipelined implicit transaction;
//   - (*Control).UpsertPublish: a revoke's records and the command that
//     carries them, one statement whose NOTIFY is sent only when every
//     record kept the version it proposed (the command was built from
//     them), delivered at its commit.
//
// # Notifications
//
// One LISTEN connection per pool wakes idle Claims at once when a Publish,
// Retry or Release commits (NOTIFY right after the write's own commit,
// coalesced per process, since PostgreSQL serialises the commits of
// notifying transactions; within the caller's transaction for InTx
// views), carries control
// commands (channels named after the schema and namespace, hashed to fit
// 63 bytes) and wakes Replies. When it drops (a restart,
// pg_terminate_backend) it reconnects and every waiter polls again; idle
// Claims and Replies also poll every PollInterval, so a lost notification
// delays work and never loses it.
//
// Limits, stated honestly:
//   - Control commands are best effort, as the contract allows: a worker
//     whose listener is reconnecting misses what is published meanwhile
//     (the worker's periodic revoke re-sync covers revokes).
//   - Leases and delays use the server's clock; NotBefore is a client time
//     compared with it.
//   - Acknowledged tasks leave no row, so a finished task is known only to
//     the result backend.
//   - Priorities: higher first within a queue. A held row keeps its place
//     in the claim index, so a claim from the head of a queue checks its
//     held rows (one heap read each) before the ready ones behind them.
//   - A Broker claims from a cursor, where its last claim of the queue
//     ended, so that a backlog's claims do not walk the held rows and the
//     dead index entries of acknowledged ones at the queue's head. A row that becomes
//     ready behind the cursor (a lease that expired, a delayed message due
//     before the cursor's row, a row another claim locked and released) is
//     claimed by the next claim from the head: within a second, or at once
//     when a claim from the cursor finds nothing.
//   - Presence (Announce) commits without waiting for the disk: it is
//     refreshed every few seconds, and a database crash may undo the last
//     announcement until the next one. Claims do the same: a crash of the
//     server may undo a claim, which makes its rows claimable again, as
//     the end of a lease does; the worker that held them then cannot
//     acknowledge them, and the task runs again (at least once, as
//     always). A revoke's upsert commits without waiting too, so that its
//     notification leaves at once, and UpsertPublish then waits for the
//     disk before it returns: workers may act on a revoke a moment before
//     it is durable, and if the server crashes in that moment, the call
//     fails.
//   - A NOTIFY follows its write's commit from the same process; if the
//     process dies in between, idle workers find the work at their next
//     poll (PollInterval).
//   - A restart of the server, or pg_terminate_backend of stem's
//     connections (application_name=stem by default), fails the calls in
//     flight with an error and nothing else: a producer's Enqueue returns
//     the error (the task may or may not be stored: stem.EnqueueError), the
//     pool dials new connections for the next calls, the worker retries
//     its claims with a growing pause (100ms to 5s) and the listener
//     reconnects with one (50ms to 2s) and makes every waiter poll again.
//     In TestPostgresConnectionsTerminatedMidRun, connections terminated
//     every 20ms for a second lose no acknowledged task and the worker
//     consumes again within a second. pgx never sends a statement again,
//     so nothing is done twice.
//   - A claim whose connection drops after its commit and before its rows
//     arrive is not lost: each claim marks the rows it leases with a token
//     of its own (stem_tasks.claim_token, migration 5), a Broker keeps the
//     tokens of its claims that failed, and its next claim of the queue
//     takes back the rows still leased under them, with the lease renewed,
//     before it claims anything new (without it they waited out their
//     lease held by nobody: 40 tasks in one run of the test above). A row
//     whose lease ended meanwhile and that another claim took carries that
//     claim's token, so it is never delivered twice at once. The token is
//     in no index, so a claim stays a heap-only update; the replay, rare,
//     reads the queue's rows.
package stempostgres
