// Package stemfile is stem's file backend: a revoke store kept in one file of
// newline-delimited JSON, one stemtype.RevokeRecord per line, for deployments
// that want durable revokes without a database (the `file://PATH` and bare
// path revoke store URLs).
//
// # Format
//
// Each line is one record as stemtype.RevokeRecord marshals it, with times in
// UTC. The file is append-only: an Upsert appends every record, each with
// version max(held+1, proposed) for its namespace and task, assigned under
// the exclusive lock, and fsyncs before it returns, so a later line may
// supersede an earlier one. Reading keeps, for each namespace and task, the
// line with the highest version.
//
// A Prune leaves a tombstone line for each record it deletes:
// {"namespace","taskId","kind":"tombstone","version","expiresAt"}, the
// deleted record's version, kept until expiresAt (the prune's now plus
// stemdriver.RevokeTombstoneRetention), after which a Prune drops it.
// While a task has a tombstone and no record, an Upsert of a record at or
// below that version is ignored (returned with Version 0), so a late write
// does not bring a pruned revoke back. List never returns tombstones. A stem
// older than tombstones reads such a line as corrupt (an unknown kind),
// reports it, and never applies it as a revoke.
// Blank lines are ignored. Operators may read the file at any time; to add
// to it by hand, hold the lock as stem does, for example
// `flock PATH.lock sh -c 'cat more.ndjson >> PATH'`.
//
// # Sharing one file
//
// Any number of Revokes handles, in one process or in several processes of
// one host (the CLI and the workers), may use the same file at once. Every
// write holds an exclusive flock on a sidecar lock file, PATH.lock, and every
// read a shared one, and then the same flock on the data file itself. The
// data file's lock keeps writers apart even when something (a tmp cleaner)
// deletes PATH.lock while it is held: a process that starts afterwards
// creates a new PATH.lock, locks it, and still waits on the data file. A
// compaction locks its new file before it renames it over PATH; a handle
// that was waiting on the replaced file notices that it is no longer at PATH
// and locks the new one. The sidecar stays for the hand edits below and for
// older stem processes, which lock only it. Each handle keeps
// an index in memory and refreshes it by reading only the bytes appended
// since its last read; it holds the file it indexed open, and notices a
// compaction by another handle because the file at PATH is then a different
// file, which it reads afresh.
//
// # Compaction
//
// Prune rewrites the file without the namespace's expired records and
// without superseded lines: it writes the winning records to a temporary
// file in the same directory, fsyncs it, renames it over PATH and fsyncs the
// directory. An Upsert does the same, dropping only superseded lines, once
// the file holds more than twice as many lines as live records plus 1000.
// Records expired but not yet pruned stay, so List keeps reporting them as
// the RevokeStore contract requires.
//
// # Corrupt lines
//
// A line that is not valid JSON, or whose record fails Validate, is logged
// (slog Warn with the keys path and line, its 1-based line number) and
// skipped; every other line still loads. A last line without its newline (a
// writer that crashed mid-append) is treated the same way when it does not
// parse, and the next append starts on a fresh line. Compaction never drops
// a corrupt line silently: before replacing the file it appends every
// corrupt line to PATH.corrupt, prefixed with its line number and a tab,
// under a header naming the file and the time, and fsyncs it. If a
// compaction fails after that step, the next one copies the same lines
// again: PATH.corrupt may hold duplicates, never less.
//
// # Limits
//
//   - One host, local file system: flock does not coordinate across hosts,
//     and on network file systems its guarantees vary. Use the Redis or
//     Postgres revoke store to share revokes between machines.
//   - Unix only (flock); elsewhere OpenRevokes returns an error.
//   - Every handle holds all records of every namespace in memory, and every
//     write takes a file-wide lock: the store suits thousands to a few
//     hundred thousand records, not millions written continuously. Loading
//     is dominated by JSON decoding, a few microseconds a record (see
//     BenchmarkLoad); later reads cost only what was appended since.
//   - The store serves every namespace of the file; the Namespace of
//     stemdriver.Options is not used.
//   - Every Upsert that changes anything costs an fsync.
//   - A record line may be at most 1 MiB; Upsert rejects larger records.
//   - Pruning forgets, after a while: once an expired record is pruned and
//     its tombstone has expired too, the next record of its task is stored
//     at the version it proposes, as in every revoke store.
//   - Prune compares expiry with the now it is given: the file has no clock
//     of its own.
//   - The parent directory must exist; OpenRevokes does not create it. The
//     lock file is created by OpenRevokes, the data file by the first write.
//     A handle may keep an old copy of the file open (and its disk space
//     allocated) until its next operation after another handle's
//     compaction.
package stemfile
