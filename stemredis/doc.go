// Package stemredis implements stem's backends on Redis: a broker on Redis
// Streams (OpenBroker), a result backend (OpenResults), a revoke store
// (OpenRevokes) and a control transport on pub/sub (OpenControl). Each
// opener takes a redis:// or rediss:// URL, makes a client of its own and
// pings the server.
//
// # URLs
//
//	redis://[user:password@]host[:port][/db][?option=value&...]
//	rediss://... (TLS)
//
// The options are those of go-redis's redis.ParseURL (dial_timeout,
// read_timeout, write_timeout, pool_size, max_retries, protocol,
// client_name, skip_verify for rediss, ...) plus:
//
//   - result_ttl: how long a result is kept after its last write, as a Go
//     duration (default 24h; 0 keeps results forever).
//   - tls_ca: a PEM file of the certificate authorities to trust (rediss).
//   - tls_cert, tls_key: PEM files of a client certificate and its key, for
//     servers that authenticate clients (rediss).
//   - tls_server_name: the name to verify the server's certificate against
//     when it differs from the URL's host (rediss).
//
// Every opener accepts every option, so one URL can serve all roles;
// unknown options are an error. Error messages name the server as
// host:port and never include the password.
//
// # Key layout
//
// Every key starts with "stem:". Namespaces and queue names are escaped
// ('%', ':', '{' and '}' are percent-encoded), so names never collide and
// never change a key's hash tag. Keys that are updated together share a
// hash tag, so they live in one Redis Cluster slot:
//
//	stem:{NS:QUEUE}:stream    stream of ready and leased messages, field "msg"
//	                          holds the envelope JSON; consumer group "stem";
//	                          a field "r" = "1" after it marks a message
//	                          appended again (re-claimed after its lease
//	                          expired, or released), which Claim reports
//	                          as Redelivered
//	stem:{NS:QUEUE}:leases    sorted set: stream id -> lease deadline (µs)
//	stem:{NS:QUEUE}:delayed   sorted set: token + envelope JSON -> NotBefore
//	                          (µs); the token (32 hex digits) is unique to
//	                          each publish
//	stem:{NS:QUEUE}:dead      stream of dead letters: msg, reason, queue,
//	                          stream_id, dead_at_ms
//	stem:{NS:QUEUE}:claim:TOKEN string: the stream ids one claim leased,
//	                          space-separated, for its replay; expires with
//	                          the lease (see Replays and restarts)
//	stem:NS:result:TASKID     string: the task's final result JSON (succeeded,
//	                          failed, cancelled), written once (SET NX), with
//	                          the retention TTL
//	stem:NS:state:TASKID      string: the task's latest result JSON that is not
//	                          final (pending, started, retry, progress), with
//	                          the retention TTL; deleted by the final write
//	stem:{NS}:revokes         hash: task id -> revoke record JSON
//	stem:{NS}:revokes:expiry  sorted set: task id -> ExpiresAt (µs)
//	stem:{NS}:revokes:changes sorted set: task id -> sequence number of its last upsert
//	stem:{NS}:revokes:seq     hash: seq (last sequence number), epoch (when the sequence began, µs)
//	stem:{NS}:workers         sorted set: worker id -> end of liveness (µs),
//	                          expiring with the latest of them
//	stem:{NS}:worker:ID       string: the WorkerInfo JSON, expiring with the
//	                          worker's liveness
//	stem:NS:reply:REQUESTID   stream of control replies, field "m", expiring
//	                          two minutes after the last reply
//
// Pub/sub channels: stem:NS:control:dbN:broadcast and
// stem:NS:control:dbN:worker:WORKERID, where N is the database: unlike
// keys, channels are server-wide, so they name the database to keep
// deployments on two databases of one server apart. Times (µs) are microseconds since the
// Unix epoch on the server's clock, read with TIME inside the scripts, so
// hosts with skewed clocks agree on leases; NotBefore is the producer's
// clock.
//
// # Broker
//
// Publish appends a ready envelope to its queue's stream (XADD) and puts a
// delayed one in the delayed set; a batch is one pipeline. Every envelope
// given is stored as a message of its own: one published twice, in one
// call or two, ready or delayed, is delivered twice (a delayed-set member
// starts with a token unique to its publish, so identical envelopes do not
// collapse into one member). Claim runs one
// Lua script per queue that first takes the queue's messages whose lease
// expired, then reads new entries with XREADGROUP COUNT, and records their
// lease deadlines, in one round trip. A delivery's receipt is its stream
// id, and a message has a fresh stream id on every delivery: a claim that
// takes a message whose lease expired appends it to the stream again (same
// bytes, new id, leased at once to that claim) and deletes the old id, so
// the old holder's Ack, ExtendLease, Retry and DeadLetter find no lease and
// return stemdriver.ErrLeaseLost. The new entry sits beyond the group's
// read position; when XREADGROUP reaches it, the claim skips it, as it
// skips every new entry that is leased already, so it is never delivered
// twice at once.
// Ack, Retry, Release and DeadLetter remove the entry (XACK and XDEL)
// together with its lease in one script, so a message leaves Redis only
// when its task is finished, and a worker killed with SIGKILL loses nothing:
// its leases expire and its messages come back. Retry stores the next
// attempt in that same script, in the delivery's queue or another one, so
// it is idempotent: a second Retry of one delivery finds no lease, returns
// stemdriver.ErrLeaseLost and stores nothing.
//
// # Replays and restarts
//
// go-redis sends a command again when its connection fails before the
// reply arrives (max_retries, 3 by default), although the server may have
// run it. Every broker command is safe under such a replay:
//   - Claim is idempotent under a claim token, one per claim of a queue:
//     the claim script records the ids it leased (key
//     stem:{NS:QUEUE}:claim:TOKEN, expiring with the lease; the next claim
//     on the queue deletes the records of claims whose replies arrived),
//     and a replay returns those messages, their leases renewed, instead
//     of leasing more. Without it the first run's messages would wait out
//     their whole lease held by nobody. When go-redis gives up (the server
//     is down), the Broker keeps the failed claim's token, and the next
//     Claim of the same consumer on that queue replays it.
//   - Ack, Release, Retry and DeadLetter check the lease and change the
//     message in one script, so a replay finds no lease, changes nothing
//     and returns stemdriver.ErrLeaseLost, which the worker takes as
//     "nothing left to do". ExtendLease sets the deadline again.
//   - Publish and PublishWithResults go through a client of their own
//     that never sends a command again once it may have reached the
//     server (dialling is still retried): a replay would store the
//     messages twice, and a replayed pending state could overwrite the
//     started a fast worker wrote. The producer gets the error
//     (stem.EnqueueError, published unknown) instead.
//
// When the server goes away (a restart, a kill), every call fails with an
// error, never silently: Publish returns it to the producer, and the
// worker retries its claims with a growing pause (100ms to 5s) on top of
// go-redis's own (5 dials 100ms apart per attempt) and consumes again as
// soon as the server answers (tens of milliseconds after its return in
// TestRedisRestartedMidRun). Pooled connections the server closed are
// noticed before use and replaced.
//
// Expired leases come before new messages: every claim looks at up to
// 1000 of its queue's expired leases, earliest deadline first, and takes
// as many as it has room for; the others keep their place for the next
// claim, and until then their holder still holds them (its Ack succeeds:
// nobody else got them). So a killed worker's tasks are re-claimed when
// their leases end, however deep the backlog behind them. The upkeep
// (moving due delayed messages to the stream, at most 1000 per run) rides
// along with Claim: on every claim that the messages ready alone do not
// fill, and every 100ms on a busy queue. When nothing is ready, a Claim
// with Wait blocks on the server (XREAD BLOCK on the streams of all its
// queues) for at most a second at a time and never past the next delayed
// message or lease deadline, then claims again. A cancelled context ends
// that wait at once (CLIENT UNBLOCK on the waiting connection, which then
// goes back into use).
//
// Limits:
//   - Durability is the server's: a Redis without an append-only file
//     (appendonly yes) loses every message, lease and revoke on restart, and
//     with appendfsync everysec the last second of them. Nothing a client
//     does can make up for that; run brokers on a persistent Redis.
//   - Each Claim blocked at the same time holds a dedicated connection,
//     from a pool of its own (up to 64 waits at once per Broker or
//     Control), kept between waits. A server `timeout` setting closes idle
//     ones; the next wait then fails once and the caller retries. The
//     CLIENT ID and CLIENT UNBLOCK commands must be allowed by the user's
//     ACL.
//   - With appendfsync everysec a server killed (SIGKILL, a crash, a power
//     cut) forgets up to about a second of acknowledged writes: a Publish
//     that returned nil in that second may be lost, an Ack may be undone
//     (the task runs again), a claim may be undone (its messages are
//     ready again). Only appendfsync always makes every acknowledged
//     Publish survive a kill (TestRedisKilledMidRun measures both).
//   - Scripts that only read (the revoke store's change list and
//     sequence, the queue depth) run with EVALSHA_RO, so that a user
//     whose ACL may read their keys but not write them (a worker reading
//     revokes) can run them; on a server before Redis 7.0 they run with
//     EVALSHA. docs/security.md gives an ACL user per role (producer,
//     worker, operator) with the keys, commands and channels each needs.
//   - Delayed messages and expired leases are only moved by claims: a
//     queue nobody claims from keeps them where they are (Depth still
//     counts them).
//   - A message whose lease expired is claimed before every message that
//     is ready (several expired ones in order of lease deadline), not in
//     its first place among them. A delayed message goes to the end of its
//     queue when it falls due (several due at once in order of NotBefore),
//     and so does a released one.
//   - During a rolling upgrade from a version that put a message whose
//     lease expired at the end of its queue, a worker of that version
//     does not skip the new entry of a message re-claimed by a newer one
//     when its reads reach it, and delivers it a second time while the
//     newer worker holds it (at least once, still: the task may run
//     twice). Upgrade every worker of a namespace together to avoid it.
//   - Priorities are ignored: a queue is first in, first out.
//   - Delayed-set members written by versions before the publish token
//     (the bare envelope JSON) are still delivered; the claim script takes
//     everything from a member's first '{' as the envelope.
//   - Entries written to a stream by something else than stem are
//     delivered with DecodeErr set (Raw is the "msg" field, or all fields
//     as a JSON array when there is none).
//   - A message re-queued by a version before the "r" field (an expired
//     lease or a Release by an older worker) is reported as a first
//     delivery, so during a rolling upgrade a redelivery of a task already
//     finished may run again (its final state is not replaced). An entry of
//     any other shape than "msg" alone or "msg" then "r" counts as
//     redelivered.
//   - Redis Cluster is not supported yet: this package opens single-node
//     clients only. Every script keeps to one hash slot except a Retry to
//     another queue than the delivery's, which touches both queues' keys in
//     one script so that it stays atomic; a Claim over several queues
//     blocks with one multi-key XREAD. Cluster refuses both unless the
//     queues share a slot.
//   - Claiming from a queue creates its stream and group, so a mistyped
//     queue name leaves empty keys behind.
//   - Consumers of the group that hold nothing and were idle ten minutes
//     are deleted, at most once a minute per queue and broker.
//
// # Results
//
// A task's results live in two string keys, so that "final states are
// final" needs no script on the hot path. A final result (succeeded,
// failed, cancelled) is written to the result key with SET NX PX: the first
// final state wins atomically and a later one is skipped, keeping the
// stored one and its TTL. Every other result (pending, started, retry, a
// progress update) replaces the state key with SET PX. A final write also
// deletes the state key, in the same pipeline, so a finished task holds one
// key. A Put is one pipeline per 1000 results, applied in order. Get and
// GetMany read both keys of each id with one MGET (per 1000 ids) and return
// the final record when there is one, else the state record.
//
// A write that is not final and comes after the final one (a late progress
// update, a redelivery's started) recreates the state key. That is
// harmless: reads prefer the result key, and the state key expires after
// the retention TTL. Only when the final record expires first (it was
// written earlier) does a read return that late record, for at most the
// time between the two writes. With result_ttl=0 neither key expires, and
// such a late state key stays until deleted.
//
// PutIfState (the controller marking a revoked task cancelled) is a small
// Lua script over both keys: it refuses when a final record is stored and
// writes only while the current state is one of those allowed.
//
// Versions before this layout wrote every state to the result key. Such a
// record that is not final is read as the task's state unless a state key
// exists, and does not block the final state: a final write that SET NX
// skips is checked once more by a script, which replaces a stored record
// that is not final (this extra round trip happens only for skipped final
// writes from another call, which are rare).
//
// # Revokes
//
// Upsert runs a Lua script per namespace that assigns each record version
// max(stored+1, proposed) on the server, so a later revoke always wins and
// concurrent writers on any connection or host converge. List reads with
// HSCAN; Prune deletes from the expiry set, in runs of at most 1000
// records, comparing expiry with the server's TIME in whole microseconds,
// and leaves the version of each record it deletes in a tombstone hash
// (with its own expiry set) for stemdriver.RevokeTombstoneRetention, so
// that a late upsert of the record does not bring it back.
// The upsert script also gives each record the next number of a per-
// namespace sequence, filed in a sorted set, so that ListChanges
// (stemdriver.RevokeChangeLister, the worker's periodic re-sync) reads only
// the records upserted since its cursor: a re-sync with nothing changed is
// one small script run, not a read of the whole hash. The price is one
// sorted-set entry per record on the server. A cursor carries the
// sequence's epoch (the server time at which it began), so a cursor from
// before the keys were lost (a flush, a restart without persistence) gets
// the whole set again instead of missing records.
//
// # Control
//
// Publish uses PUBLISH: pub/sub is fire-and-forget, so a worker that is
// disconnected when a command is published never sees it (the core
// re-syncs revokes from the revoke store to make up for that), and there is
// no acknowledgement that anybody received it. Replies go to a stream per
// request id (XADD and PEXPIRE in one MULTI), so a collector that starts
// reading late still sees every reply stored in the last two minutes.
// Presence is one key per worker holding its info, written with its ttl
// (PX) by a script that refuses, atomically, while another instance's
// announcement of the id is live; a sorted set of liveness deadlines indexes
// them for Workers, which drops the entries whose time passed. Every
// presence key expires on its own.
package stemredis
