// Package stemsqlite is stem's SQLite backend: broker, result backend,
// revoke store and control transport in one database file, on
// modernc.org/sqlite (pure Go, no cgo, so `go install` works everywhere).
// Several worker processes and the CLI share one file; no server is needed.
//
// # URL
//
//	sqlite:///absolute/path/stem.db[?result_ttl=24h]
//	sqlite://relative/path/stem.db   (relative to the working directory)
//
// The path may be percent-encoded; it cannot hold '?' or NUL. The one
// option is result_ttl, a Go duration, how long results are kept
// (DefaultResultTTL; 0 keeps them until overwritten). An unknown option, or
// a bad value, is an error matching stemdriver.ErrBadConfig. The file is
// created, with its schema, when it does not exist; its directory is not: a
// missing directory is an error naming it. PathFromURL gives the path of a
// URL, for a caller that creates the directory itself.
//
// A file that is not SQLite (its first bytes are not SQLite's header) is
// refused with an error naming it, and left untouched; so is a SQLite file
// that holds another program's tables, and one whose schema is newer than
// this code knows.
//
// # One handle per file per process
//
// Every driver opened on one file in one process shares one handle
// (counted; closed with the last driver): a write pool of exactly one
// connection, a read pool of a few, the change watcher's own connection,
// and the pruner. The file is in WAL mode (readers never block the writer,
// nor it them) with synchronous=NORMAL (a commit survives a crash of the
// process; a power loss may lose the last commits, never corrupt the file)
// and a busy timeout.
//
// One write connection per process is deliberate: SQLite has one writer
// at a time per file anyway, so more connections would only move the queue
// of a process's writers from Go's pool, which is fair and honours
// contexts, onto the file lock, where they would spin in the busy handler
// against each other. Every write is one transaction begun IMMEDIATE
// (taking the write lock at BEGIN), so two transactions never both read
// and then deadlock upgrading to write. Between processes, a writer waits
// for the lock in SQLite's busy handler (which gives up when the call's
// context ends), and a write that still finds the file busy is run again,
// whole, until it succeeds or the context ends: "database is locked"
// never reaches a caller. Before that, on Unix, stem's writers of all
// processes queue on an flock of PATH-stemlock (a file created beside the
// database, never deleted): SQLite's busy handler polls with sleeps of up
// to 100 ms, so a writer could wait long after the lock was free, while the
// flock wakes the next writer as soon as it is released (with three busy
// worker processes, the longest write wait fell from 0.3-0.65 s to
// 0.13-0.26 s). Where flock fails the driver goes on without it. The
// statements of the write paths are prepared once, on the write
// connection, when the handle opens. That wait is the one retry this driver does; it
// is logged at debug level. Any other error is returned at once.
//
// A file deleted or replaced while a process has it open (an operator's
// rm, a restored backup moved over it) would leave that process working
// on a file no new process sees: every operation checks that the path
// still names the file opened, and otherwise fails with an error naming
// it, so that the process is restarted rather than silently split off.
//
// # Wake-ups across processes
//
// A Claim with Wait, a control subscription and a Replies call block until
// the file changes. The handle's watcher reads PRAGMA data_version on its
// own connection, which never writes: the value changes whenever another
// connection, of any process, commits to the file, so one cheap read (no
// table is touched, no lock is taken) tells every waiter of the process
// that something may have changed; they then read what they wait for. The
// watcher reads it only while someone in the process waits. Writes of the
// process wake its waiters at once, and a blocked Claim also wakes when the
// first delayed message or expiring lease of its queues becomes due.
//
// When to read data_version: on Linux, an inotify watch of the file's
// directory (standard library only) says when the WAL file is written, by
// any process; the watcher then reads data_version every 2 ms for 20 ms
// (the write event may come just before the commit is visible), and every
// 250 ms otherwise, as a safety net. Elsewhere, or when inotify cannot be
// had, it reads data_version every 4 ms while someone waits. (The watch is
// on the directory, so a database in a busy directory such as /tmp costs a
// little for every write there; the default state directory is stem's own.) Measured on a
// 2-core VM: a Go timer firing every 4 ms alone costs about 2.5% of a
// core there and polling data_version every 4 ms about 7%, against the
// target of 1% for an idle worker; with the WAL notifier an idle worker
// costs about 0.4%, and a task published by another process is picked up
// in about 1.5 ms (p50).
//
// The alternatives: a wake table that publishers bump would cost a write
// per publish and still need polling to be seen by other processes, so it
// adds a write and saves nothing; file change notification alone (inotify,
// or the fsnotify module, which we do not depend on) fires on every write
// of the WAL, commits or not, before a commit is visible, and not at all
// on some platforms and file systems, so here it only says when to look,
// and data_version says whether anything was committed.
//
// # Schema
//
// The schema is versioned with PRAGMA user_version and migrated by the
// library in one IMMEDIATE transaction, so several processes opening a new
// file at once create it once, and a migration keeps every row. Version 1
// is the first schema; version 2 adds stem_revoke_tombstones; version 3
// adds the change sequence of revoke records (their seq column and
// stem_revoke_changes) and indexes of revoke records and tombstones by
// namespace and expiry; version 4 adds the triggers that number a write of
// a revoke record made without a number (by a stem of version 2 still
// running, or by hand). Every table but stem_revoke_changes has a
// namespace column: namespaces in one file never mix. All times are ns
// since the Unix epoch.
//
//	stem_tasks         one row per message: namespace, queue, priority,
//	                   sort_at (publish stamp, or NotBefore when delayed),
//	                   state (0 ready, 1 delayed, 2 leased), visible_at (when
//	                   a delayed or leased row is claimable), claims (count),
//	                   task_id, body (the envelope's JSON)
//	stem_dead_letters  dead-lettered messages: raw body, reason, time
//	stem_results       one row per task: state, final flag, body, expires_at
//	stem_revokes       one row per namespace and task: version, expires_at,
//	                   body, seq (its last write's number in the change
//	                   sequence; 0 for rows from before version 3)
//	stem_revoke_tombstones  the version of each pruned revoke record, and
//	                   when the tombstone expires
//	stem_revoke_changes  one row: the change sequence's counter (the last
//	                   seq given) and the file's epoch (random, drawn once)
//	stem_control       control messages: seq, namespace, target ('*' for all),
//	                   body, created_at
//	stem_replies       control replies: seq, namespace, request_id, body
//	stem_presence      announced workers: namespace, worker_id, instance,
//	                   body, expires_at
//
// # Broker
//
// A claim first reads whether any of its queues has a claimable row, so
// that an idle consumer never takes the write lock; then, in one write
// transaction, for each queue rows whose delay or lease has passed become
// ready, and one UPDATE ... RETURNING leases the first ready rows by
// priority (higher first), then sort_at, then publish order, counting the
// claim. The receipt is "row.claims": a
// holder's Ack, ExtendLease, Retry, Release or DeadLetter matches the row
// only while its claim count is the holder's and it did not Release it, so
// ErrLeaseLost is exact (a lease that expired stays the holder's until
// another Claim takes the row), and Redelivered is exactly "claimed
// before". Ack deletes the row;
// Retry deletes it and inserts next in one transaction; Release makes it
// ready in its old place; DeadLetter moves its raw bytes, with the reason,
// to stem_dead_letters (Broker.DeadLetters lists them; they are kept until
// deleted by hand). A due delayed message takes its place by NotBefore
// among messages published at that time, so retries are not starved by a
// backlog.
//
// # Results, revokes, control
//
// A result write is one upsert whose update applies only when the stored
// state is not final (or expired), so final states are final against every
// writer. GetMany and GetFinalMany are one query each. Revoke upserts read
// and write each record in one transaction (version max(stored+1,
// proposed)); Prune uses the caller's clock, as a file has none, and
// leaves in stem_revoke_tombstones the version of each record it deletes,
// for stemdriver.RevokeTombstoneRetention, so that a late upsert of the
// record does not bring it back (schema version 2).
//
// The revoke store lists changes (stemdriver.RevokeChangeLister, a
// worker's periodic re-sync), so that a re-sync with nothing changed
// reads the counter's row and probes the index of (namespace, seq), however
// many records the file holds, instead of reading every record (schema
// version 3). Each record an upsert
// stores takes the next number of the file's one counter, read and written
// in the upsert's transaction: a write transaction holds the file's write
// lock from BEGIN to COMMIT, so numbers are distinct across processes and
// follow commit order. ListChanges reads the counter and the records
// numbered after its cursor in one read transaction (one snapshot), and
// returns the counter as the next cursor, "EPOCH:SEQ": whatever commits
// after that snapshot has a higher number. A cursor of another epoch (of
// another file, or of this path's file before it was deleted and created
// again), one past the counter, or one it cannot read lists every record,
// as "" does. The Prune of each re-sync finds what expired by the index of
// (namespace, expires_at), so it too reads no record when none expired.
// Measured on a 2-core VM over 100,000 records of a namespace
// (BenchmarkRevokeResync), a re-sync with nothing changed: List 0.48-0.57 s,
// ListChanges 27-37 µs; the Prune 22 µs, against 53-58 ms, holding the
// write lock, without the expiry index.
//
// Control messages are rows that each subscription reads after its cursor
// (the highest seq when it subscribed), so a subscription sees exactly the
// messages published after Subscribe returned; a slow subscriber is held
// back, never handed a gap, while the rows are kept.
//
// # Retention
//
// Each handle prunes the whole file when it opens and once a minute, in
// batches of 1000 rows: results past their expiry, control messages and
// replies older than 5 minutes, presence past its ttl. Acknowledged tasks
// are deleted at once. Revoke records are pruned by their store's Prune;
// dead letters are kept. The file does not shrink (no VACUUM): the pages of
// deleted rows are reused. Measured: 223,000 no-op tasks in 20 s left a
// 48 MB file (the kept results, about 214 B a task) and a WAL of 4 MB (the
// automatic checkpoint's size); pruned a day on, all but 20 of its pages
// were free for reuse.
package stemsqlite
