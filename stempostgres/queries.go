package stempostgres

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
	"unicode/utf8"
)

// queries are every statement of the package, with the schema's tables
// qualified, built once per schema. Parameters are numbered as each
// method's comment says.
type queries struct {
	schema string

	// Broker.
	publish     string // $1 ns, $2 queues[], $3 priorities[], $4 not_befores[], $5 task_ids[], $6 payloads[], $7 channel ('' for none)
	claim       string // $1 ns, $2 queue, $3 max, $4 lease µs, $5 claim token
	claimAfter  string // claim's, then a cursor: $6 priority, $7 due_at, $8 id
	claimReplay string // $1 ns, $2 queue, $3 claim tokens[], $4 lease µs
	extend      string // $1 ns, $2 queue, $3 id, $4 claims, $5 lease µs
	ack         string // $1 ns, $2 queues[], $3 ids[], $4 claims[]
	release     string // $1 ns, $2 queues[], $3 ids[], $4 claims[], $5 channel ('' for none)
	retry       string // $1 ns, $2 queue, $3 id, $4 claims, $5 new queue, $6 priority, $7 not_before, $8 task_id, $9 payload, $10 channel ('' for none)
	deadLetter  string // $1 ns, $2 queue, $3 id, $4 claims, $5 reason
	depth       string // $1 ns, $2 queue
	nextVisible string // $1 ns, $2 queues[]
	delayed     string // $1 ns, $2 queue, $3 limit

	// Results.
	putResults   string // $1 ns, $2 ids[], $3 states[], $4 bodies[], $5 ttl µs (0: forever)
	putIfState   string // $1 ns, $2 id, $3 state, $4 body, $5 ttl µs, $6 states[]
	getResults   string // $1 ns, $2 ids[]
	getFinals    string // $1 ns, $2 ids[]
	pruneResults string // none

	// Revokes.
	upsertRevokes   string // $1 nss[], $2 task_ids[], $3 versions[], $4 bodies[], $5 expires[]
	revokeNotify    string // upsertRevokes's, then $6 channel, $7 payload
	revokeOne       string // revokeNotify for one record: $1 ns, $2 task_id, $3 version, $4 body, $5 expires, $6 channel, $7 payload
	listRevokes     string // $1 ns
	revokesTable    string // the qualified name of stem_revokes, for $2 below
	listRevokesAt   string // $1 ns, $2 revokes table; the epoch and snapshot in a row of their own (see revokes.go)
	revokeChanges   string // $1 ns, $2 revokes table, $3 cursor's epoch, $4 cursor's snapshot
	pruneRevokes    string // $1 ns, $2 tombstone retention (µs); returns the count deleted
	pruneTombstones string // $1 ns

	// Control.
	storeControl string // $1 ns, $2 targets[], $3 body, $4 channel
	loadControl  string // $1 id
	pruneControl string // none
	reply        string // $1 ns, $2 request id, $3 body
	replies      string // $1 ns, $2 request id, $3 after id
	announce     string // $1 ns, $2 id, $3 instance, $4 info, $5 ttl µs
	holder       string // $1 ns, $2 id
	withdraw     string // $1 ns, $2 id, $3 instance
	workers      string // $1 ns
	pruneReplies string // none
	pruneWorkers string // none: announcements expired an hour ago
	notify       string // $1 channel, $2 payload
}

// finalStates is the SQL list of final states.
const finalStates = "('succeeded','failed','cancelled')"

func newQueries(schema string) *queries {
	s := quoteIdent(schema)
	t := s + ".stem_tasks"
	r := s + ".stem_results"
	q := &queries{schema: schema}

	// One statement: the rows, then (in a caller's transaction) one NOTIFY
	// per queue, delayed rows included, so that idle Claims re-arm their
	// timer for the next due row (Postgres folds equal notifications of
	// one transaction).
	q.publish = `WITH ins AS (
	INSERT INTO ` + t + ` (namespace, queue, priority, visible_at, due_at, task_id, payload)
	SELECT $1, u.queue, u.priority, greatest(now(), u.nb), greatest(now(), u.nb), u.task_id, u.payload
	FROM unnest($2::text[], $3::int[], $4::timestamptz[], $5::text[], $6::bytea[]) AS u(queue, priority, nb, task_id, payload)
	RETURNING queue)
SELECT count(*) FROM (SELECT pg_notify($7, ` + notifyPayloadSQL("$1", "queue") + `) FROM (SELECT DISTINCT queue FROM ins WHERE $7 <> '') d) n`

	// The claim plan: = ANY(ARRAY(subquery)) keeps the index scan at every
	// table size (IN (subquery) turned into a sequential scan of the whole
	// table at 20k-50k rows on PostgreSQL 15; see PERFORMANCE.md).
	// The claim index orders rows by due_at, which a claim leaves alone:
	// the lease is visible_at, a column no index holds, so that the claim's
	// UPDATE is a heap-only (HOT) one, with no new index entries (the
	// table's fillfactor leaves room on each page for a claimed version of
	// every row). A held row stays at its place in the index; the heap
	// filter on visible_at skips it until its lease ends. A row not held
	// has visible_at = due_at.
	q.claim = `UPDATE ` + t + ` SET claims = claims + 1, leased = true, claim_token = $5, visible_at = now() + $4 * interval '1 microsecond'
WHERE id = ANY(ARRAY(
	SELECT id FROM ` + t + `
	WHERE namespace = $1 AND queue = $2 AND due_at <= now() AND visible_at <= now()
	ORDER BY priority DESC, due_at, id
	LIMIT $3
	FOR UPDATE SKIP LOCKED))
RETURNING id, claims, priority, due_at, payload`

	// Held rows are found by primary key alone. The namespace and queue
	// are compared with IS NOT DISTINCT FROM (the same test on these NOT
	// NULL columns), which no index can serve: with plain equality, a
	// table whose statistics know other namespaces only (a new
	// deployment's first burst) made the planner scan the claim index's
	// whole namespace prefix for each statement (TestSettlePlansUsePrimaryKey).
	// The claim from a cursor (the last row a claim took): rows of a
	// higher priority, then those of the cursor's priority after it (a
	// range that starts past the rows earlier claims hold and the dead
	// index entries of those acknowledged), then those of lower
	// priorities; in index order, as claim.
	// FOR UPDATE is not allowed in a UNION's own branches, so each is a
	// sub-select; the LIMIT above them stops the Append, and so the row
	// locks, at $3 rows.
	branch := func(cond, order string) string {
		return `SELECT id FROM (SELECT id FROM ` + t + ` WHERE namespace = $1 AND queue = $2 AND ` + cond + ` AND due_at <= now() AND visible_at <= now()
		ORDER BY ` + order + ` LIMIT $3 FOR UPDATE SKIP LOCKED)`
	}
	q.claimAfter = `UPDATE ` + t + ` SET claims = claims + 1, leased = true, claim_token = $5, visible_at = now() + $4 * interval '1 microsecond'
WHERE id = ANY(ARRAY(
	` + branch("priority > $6::int", "priority DESC, due_at, id") + ` hi
	UNION ALL
	` + branch("priority = $6::int AND (due_at, id) > ($7::timestamptz, $8::bigint)", "due_at, id") + ` same
	UNION ALL
	` + branch("priority < $6::int", "priority DESC, due_at, id") + ` lo
	LIMIT $3))
RETURNING id, claims, priority, due_at, payload`
	// The replay of claims whose replies were lost: the rows they leased
	// that are still theirs (leased, the lease running, the token theirs:
	// a row re-claimed by another after its lease ended carries that
	// claim's token), with the lease renewed. Rare, so no index holds the
	// token (a claim stays heap-only); the queue's rows are read.
	q.claimReplay = `UPDATE ` + t + ` SET visible_at = now() + $4 * interval '1 microsecond'
WHERE namespace = $1 AND queue = $2 AND claim_token = ANY($3::text[]) AND leased AND visible_at > now()
RETURNING id, claims, priority, due_at, payload`
	held := `id = $3 AND (namespace, queue) IS NOT DISTINCT FROM ($1, $2) AND claims = $4 AND leased`
	q.extend = `UPDATE ` + t + ` SET visible_at = now() + $5 * interval '1 microsecond' WHERE ` + held
	// Ack and Release find their rows by id = ANY($3) (the primary key, at
	// every table size: a join with unnest chose a sequential scan; the
	// namespace as for held), and check each row's claim count and queue
	// against its delivery's, found with array_position ($3 holds each id
	// once: held). A correlated EXISTS over unnest($3, $4, $2) did the same
	// with a nested loop that took two thirds of the statement's time.
	many := `t.id = ANY($3::bigint[]) AND t.namespace IS NOT DISTINCT FROM $1 AND t.leased
	AND t.claims = ($4::int[])[array_position($3::bigint[], t.id)]
	AND t.queue = ($2::text[])[array_position($3::bigint[], t.id)]`
	q.ack = `DELETE FROM ` + t + ` t WHERE ` + many + `
RETURNING t.id, t.claims`
	q.release = `WITH rel AS (
	UPDATE ` + t + ` t SET leased = false, visible_at = now(), due_at = now()
	WHERE ` + many + `
	RETURNING t.id, t.claims, t.queue),
n AS (SELECT pg_notify($5, ` + notifyPayloadSQL("$1", "queue") + `) FROM (SELECT DISTINCT queue FROM rel WHERE $5 <> '') d)
SELECT id, claims, (SELECT count(*) FROM n) FROM rel`
	q.retry = `WITH del AS (
	DELETE FROM ` + t + ` WHERE ` + held + ` RETURNING id),
ins AS (
	INSERT INTO ` + t + ` (namespace, queue, priority, visible_at, due_at, task_id, payload)
	SELECT $1, $5, $6, greatest(now(), $7::timestamptz), greatest(now(), $7::timestamptz), $8, $9 FROM del
	RETURNING queue)
SELECT count(*), count(pg_notify($10, ` + notifyPayloadSQL("$1", "queue") + `)) FILTER (WHERE $10 <> '') FROM ins`
	q.deadLetter = `WITH del AS (
	DELETE FROM ` + t + ` WHERE ` + held + ` RETURNING namespace, queue, task_id, payload)
INSERT INTO ` + s + `.stem_dead_letters (namespace, queue, task_id, payload, reason)
SELECT namespace, queue, task_id, payload, $5 FROM del`
	q.depth = `SELECT count(*) FROM ` + t + ` WHERE namespace = $1 AND queue = $2 AND NOT (leased AND visible_at > now())`
	// Delayed messages are the rows not leased and not visible yet; one
	// statement gives the count and the soonest rows (read-only, for
	// inspect --scheduled).
	q.delayed = `WITH d AS (SELECT id, due_at, payload FROM ` + t + ` WHERE namespace = $1 AND queue = $2 AND due_at > now() AND NOT leased)
SELECT (SELECT count(*) FROM d), s.id, s.payload FROM (SELECT id, due_at, payload FROM d ORDER BY due_at, id LIMIT $3) s
RIGHT JOIN (SELECT 1) one ON true ORDER BY s.due_at, s.id`
	// The next delayed message (due_at in the index) or lease end (held
	// rows, due before now: the heap's visible_at).
	q.nextVisible = `SELECT extract(epoch FROM least(
	(SELECT min(due_at) FROM ` + t + ` WHERE namespace = $1 AND queue = ANY($2::text[]) AND due_at > now()),
	(SELECT min(visible_at) FROM ` + t + ` WHERE namespace = $1 AND queue = ANY($2::text[]) AND due_at <= now() AND visible_at > now())) - now())`

	// Results: final states are final, in the upsert's WHERE.
	expires := `CASE WHEN $5::bigint > 0 THEN now() + $5::bigint * interval '1 microsecond' END`
	live := `(r.expires_at IS NULL OR r.expires_at > now())`
	q.putResults = `INSERT INTO ` + r + ` AS r (namespace, id, state, body, expires_at)
SELECT $1, u.id, u.state, u.body, ` + expires + `
FROM unnest($2::text[], $3::text[], $4::bytea[]) AS u(id, state, body)
ORDER BY u.id -- rows locked in one order: concurrent writers never deadlock
ON CONFLICT (namespace, id) DO UPDATE SET state = excluded.state, body = excluded.body, expires_at = excluded.expires_at
WHERE r.state NOT IN ` + finalStates + ` OR NOT ` + live
	q.putIfState = `UPDATE ` + r + ` AS r SET state = $3, body = $4, expires_at = ` + expires + `
WHERE r.namespace = $1 AND r.id = $2 AND r.state = ANY($6::text[]) AND r.state NOT IN ` + finalStates + ` AND ` + live
	// One primary-key descent per id: the LIMIT keeps the planner from
	// flattening the lookup into a join or an = ANY, either of which it
	// served, on statistics that knew other namespaces only, with a scan
	// of the namespace's whole key range (TestGetPlansDescendPerID).
	get := func(cond string) string {
		return `SELECT x.id, x.body FROM unnest($2::text[]) AS u(id), LATERAL (
	SELECT r.id, r.body FROM ` + r + ` r WHERE r.namespace = $1 AND r.id = u.id AND ` + live + cond + ` LIMIT 1) x`
	}
	q.getResults = get("")
	q.getFinals = get(` AND r.state IN ` + finalStates)
	q.pruneResults = `DELETE FROM ` + r + ` WHERE expires_at <= now()`

	// Revokes: the causal version rule in the upsert.
	v := s + ".stem_revokes"
	tomb := s + ".stem_revoke_tombstones"
	q.revokesTable = v
	// notPruned keeps out a record of a task that has no stored record and
	// a tombstone at or above the version it proposes (a late write of a
	// pruned revoke); ns, task and version are SQL expressions.
	notPruned := func(ns, task, version string) string {
		return `NOT EXISTS (SELECT 1 FROM ` + tomb + ` t WHERE t.namespace = ` + ns + ` AND t.task_id = ` + task + ` AND t.version >= ` + version + `
	AND NOT EXISTS (SELECT 1 FROM ` + v + ` r WHERE r.namespace = ` + ns + ` AND r.task_id = ` + task + `))`
	}
	q.upsertRevokes = `INSERT INTO ` + v + ` AS v (namespace, task_id, version, body, expires_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[], $5::timestamptz[]) AS u(ns, task_id, version, body, expires_at)
WHERE ` + notPruned("u.ns", "u.task_id", "u.version") + `
ORDER BY u.ns, u.task_id -- rows locked in one order: concurrent writers never deadlock
ON CONFLICT (namespace, task_id) DO UPDATE
SET version = greatest(v.version + 1, excluded.version), body = excluded.body, expires_at = excluded.expires_at
RETURNING namespace, task_id, version`
	// The upsert, then the NOTIFY only if every record was stored with the
	// version it proposed (the payload was built from the proposals); the
	// notification is delivered when the upsert commits. The scalar
	// subquery is uncorrelated: it runs once, not once per row.
	q.revokeNotify = `WITH up AS (
` + q.upsertRevokes + `),
same AS (SELECT count(*) = cardinality($1::text[]) AS ok
	FROM up JOIN unnest($1::text[], $2::text[], $3::bigint[]) AS p(ns, task_id, version)
	ON p.ns = up.namespace AND p.task_id = up.task_id AND p.version = up.version)
SELECT up.namespace, up.task_id, up.version, (SELECT count(pg_notify($6, $7)) FROM same WHERE same.ok) FROM up`
	// The same for one record, the usual revoke, with no arrays to
	// unnest, sort and join.
	q.revokeOne = `WITH up AS (
	INSERT INTO ` + v + ` AS v (namespace, task_id, version, body, expires_at)
	SELECT $1::text, $2::text, $3::bigint, $4::bytea, $5::timestamptz WHERE ` + notPruned("$1::text", "$2::text", "$3::bigint") + `
	ON CONFLICT (namespace, task_id) DO UPDATE
	SET version = greatest(v.version + 1, excluded.version), body = excluded.body, expires_at = excluded.expires_at
	RETURNING namespace, task_id, version)
SELECT up.namespace, up.task_id, up.version, (SELECT count(pg_notify($6, $7)) FROM up WHERE up.version = $3) FROM up`
	q.listRevokes = `SELECT version, body FROM ` + v + ` WHERE namespace = $1`
	// The listings of ListChanges: one statement, so one snapshot, gives
	// the rows and the snapshot that is the next cursor, in a row of its
	// own (epoch, snapshot, and whether the cursor given applies); the
	// records' rows have NULL there. The epoch names the cluster (its
	// system identifier), its timeline (the first part of a WAL file name,
	// which a promotion or a point-in-time recovery changes: a standby
	// promoted after an asynchronous failover gives again the transaction
	// ids of the transactions it never received) and the table (its oid):
	// a cursor of another server, of the server before a failover, or of a
	// table dropped and created again does not apply. The changes are the
	// rows whose writer's transaction the cursor's snapshot does not see
	// (in progress then, or begun after), found from the snapshot's xmin
	// in the (namespace, xid) index. A cursor whose snapshot is ahead of
	// the server's (transaction ids that went back) does not apply either,
	// nor does any on a standby, which lists everything: its snapshots
	// are not taken where the transactions run.
	meta := `SELECT (SELECT system_identifier FROM pg_control_system())::text || '.' ||
	CASE WHEN pg_is_in_recovery() THEN 'standby' ELSE substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8) END || '.' ||
	$2::text::regclass::oid::text AS epoch, pg_current_snapshot() AS snap`
	q.listRevokesAt = `WITH m AS MATERIALIZED (` + meta + `)
SELECT m.epoch, m.snap::text, true, NULL::bigint, NULL::bytea FROM m
UNION ALL
SELECT NULL, NULL, NULL, version, body FROM ` + v + ` WHERE namespace = $1`
	q.revokeChanges = `WITH m AS MATERIALIZED (` + meta + `),
ok AS MATERIALIZED (SELECT m.epoch = $3::text AND NOT pg_is_in_recovery() AND pg_snapshot_xmax(m.snap) >= pg_snapshot_xmax($4::text::pg_snapshot) AS ok FROM m)
SELECT m.epoch, m.snap::text, ok.ok, NULL::bigint, NULL::bytea FROM m, ok
UNION ALL
SELECT NULL, NULL, NULL, r.version, r.body FROM ` + v + ` r
WHERE (SELECT ok FROM ok) AND r.namespace = $1
	AND r.xid >= pg_snapshot_xmin($4::text::pg_snapshot) AND NOT pg_visible_in_snapshot(r.xid, $4::text::pg_snapshot)`
	// Prune leaves a tombstone of every record it deletes, kept $2
	// microseconds; pruneTombstones deletes those past that time.
	q.pruneRevokes = `WITH gone AS (DELETE FROM ` + v + ` WHERE namespace = $1 AND expires_at <= now() RETURNING namespace, task_id, version),
kept AS (INSERT INTO ` + tomb + ` AS t (namespace, task_id, version, expires_at)
	SELECT namespace, task_id, version, now() + $2 * interval '1 microsecond' FROM gone
	ON CONFLICT (namespace, task_id) DO UPDATE SET version = greatest(t.version, excluded.version), expires_at = excluded.expires_at)
SELECT count(*) FROM gone`
	q.pruneTombstones = `DELETE FROM ` + tomb + ` WHERE namespace = $1 AND expires_at <= now()`

	// Control.
	q.notify = `SELECT pg_notify($1, $2)`
	q.storeControl = `WITH ins AS (
	INSERT INTO ` + s + `.stem_control_messages (namespace, targets, body) VALUES ($1, $2, $3) RETURNING id)
SELECT pg_notify($4, 'r' || id) FROM ins`
	q.loadControl = `SELECT targets, body FROM ` + s + `.stem_control_messages WHERE id = $1`
	q.pruneControl = `DELETE FROM ` + s + `.stem_control_messages WHERE created_at < now() - interval '1 minute'`
	q.reply = `INSERT INTO ` + s + `.stem_control_replies (namespace, request_id, body) VALUES ($1, $2, $3)`
	q.replies = `SELECT id, body FROM ` + s + `.stem_control_replies WHERE namespace = $1 AND request_id = $2 AND id <> ALL($3::bigint[])
	AND created_at > now() - interval '2 minutes' ORDER BY id LIMIT 500`
	q.pruneReplies = `DELETE FROM ` + s + `.stem_control_replies WHERE created_at < now() - interval '2 minutes'`
	q.pruneWorkers = `DELETE FROM ` + s + `.stem_workers WHERE expires_at < now() - interval '1 hour'`
	w := s + ".stem_workers"
	// The check and the write are one statement: the upsert takes the row
	// only when it is this instance's or expired; otherwise it returns no
	// row and the holder is read (from the statement's snapshot).
	q.announce = `WITH up AS (
	INSERT INTO ` + w + ` AS w (namespace, id, instance, info, expires_at)
	VALUES ($1, $2, $3, $4, now() + $5 * interval '1 microsecond')
	ON CONFLICT (namespace, id) DO UPDATE SET instance = excluded.instance, info = excluded.info, expires_at = excluded.expires_at
	WHERE w.instance = excluded.instance OR w.expires_at <= now()
	RETURNING 1)
SELECT (SELECT count(*) FROM up), (SELECT info FROM ` + w + ` WHERE namespace = $1 AND id = $2 AND instance <> $3)`
	q.holder = `SELECT info FROM ` + w + ` WHERE namespace = $1 AND id = $2 AND instance <> $3`
	q.withdraw = `DELETE FROM ` + w + ` WHERE namespace = $1 AND id = $2 AND instance = $3`
	q.workers = `SELECT info FROM ` + w + ` WHERE namespace = $1 AND expires_at > now() ORDER BY id`
	return q
}

// notifyPayloadSQL is the SQL of a broker notification's payload:
// "<len(ns)>:<ns><queue>", so that neither name needs escaping.
func notifyPayloadSQL(ns, queue string) string {
	return `length(` + ns + `)::text || ':' || ` + ns + ` || ` + queue
}

// brokerPayload is notifyPayloadSQL's value in Go.
func brokerPayload(ns, queue string) string {
	return strconv.Itoa(utf8.RuneCountInString(ns)) + ":" + ns + queue
}

// channelName returns a NOTIFY channel for kind ("b" broker, "c" control,
// "r" replies) in the scope parts: stem_<kind>_ and a hash, so that it
// fits the 63 bytes of an identifier whatever the names.
func channelName(kind string, parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return "stem_" + kind + "_" + hex.EncodeToString(h[:12])
}
