package stemredis

import (
	"strconv"
	"strings"
)

// Every Redis key and pub/sub channel stemredis uses is built in this file,
// so the layout documented in the package comment lives in one place.
//
// Namespaces and queue names are escaped (see escape) before they go into a
// key, so that "a:b" + "c" and "a" + "b:c" never collide and a name holding a
// brace cannot change a key's Redis Cluster hash slot.

// keyPrefix starts every key and channel.
const keyPrefix = "stem:"

// group is the consumer group every queue's stream is read with.
const group = "stem"

// msgField is the stream entry field holding an envelope's JSON.
const msgField = "msg"

// escape returns s with '%', ':', '{' and '}' percent-encoded.
func escape(s string) string {
	if !strings.ContainsAny(s, "%:{}") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '%':
			b.WriteString("%25")
		case ':':
			b.WriteString("%3A")
		case '{':
			b.WriteString("%7B")
		case '}':
			b.WriteString("%7D")
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// queueKeys are the keys of one queue. They share the hash tag
// {namespace:queue}, so they live in one Redis Cluster slot and one Lua
// script may touch them all.
type queueKeys struct {
	// stream holds ready and leased messages (a stream read by group).
	stream string
	// leases maps the stream id of every leased message to its lease
	// deadline (sorted set, microseconds since the epoch, server clock).
	leases string
	// delayed maps every delayed message, a token unique to its publish
	// followed by its JSON (see delayedMember), to its NotBefore (sorted
	// set, microseconds since the epoch).
	delayed string
	// dead keeps dead-lettered messages with their reasons (a stream).
	dead string
	// claimPrefix starts the key of a claim record (see claimKey).
	claimPrefix string
}

// newQueueKeys returns the keys of queue in namespace ns.
func newQueueKeys(ns, queue string) queueKeys {
	p := keyPrefix + "{" + escape(ns) + ":" + escape(queue) + "}:"
	return queueKeys{
		stream:  p + "stream",
		leases:  p + "leases",
		delayed: p + "delayed",
		dead:    p + "dead",

		claimPrefix: p + "claim:",
	}
}

// claimKey is the key of the claim record of one claim token: the stream
// ids the claim leased, kept for a replay of that claim (see claimScript).
func (k queueKeys) claimKey(token string) string {
	return k.claimPrefix + token
}

// resultKey is the string key holding the JSON of task id's final result
// (succeeded, failed or cancelled), written once with SET NX. Results carry
// no hash tag: they spread over every slot of a cluster.
func resultKey(ns, id string) string {
	return keyPrefix + escape(ns) + ":result:" + id
}

// stateKey is the string key holding the JSON of task id's latest result
// that is not final (pending, started, retry, progress), overwritten by
// every such write and deleted by the final one.
func stateKey(ns, id string) string {
	return keyPrefix + escape(ns) + ":state:" + id
}

// revokeKeys are the revoke store's keys of one namespace, sharing the hash
// tag {namespace}.
type revokeKeys struct {
	// records maps task id to the revoke record's JSON (a hash).
	records string
	// expiry maps task id to the record's ExpiresAt in microseconds since
	// the epoch (a sorted set); records that never expire are absent.
	expiry string
	// changes maps task id to the sequence number of the record's last
	// upsert (a sorted set), so that ListChanges reads what changed.
	changes string
	// seq is a hash: "seq", the last sequence number handed out, and
	// "epoch", the server time (µs) at which the sequence began, which
	// tells a cursor of the sequence from one of a sequence since lost.
	seq string
	// tombs maps the task id of each pruned record to its version (a
	// hash), and tombExpiry the same ids to the end of the tombstone's
	// retention in microseconds, server clock (a sorted set): see
	// stemdriver.RevokeStore.
	tombs, tombExpiry string
}

// newRevokeKeys returns the revoke keys of namespace ns.
func newRevokeKeys(ns string) revokeKeys {
	p := keyPrefix + "{" + escape(ns) + "}:revokes"
	return revokeKeys{records: p, expiry: p + ":expiry", changes: p + ":changes", seq: p + ":seq",
		tombs: p + ":tombs", tombExpiry: p + ":tombs:expiry"}
}

// upsertKeys returns the KEYS of the revoke upsert scripts.
func (k revokeKeys) upsertKeys() []string {
	return []string{k.records, k.expiry, k.changes, k.seq, k.tombs, k.tombExpiry}
}

// presenceKeys are the worker presence keys of one namespace, sharing the
// hash tag {namespace}. Every one of them expires on its own: a namespace
// whose workers all died leaves nothing behind once their ttls passed.
type presenceKeys struct {
	// live maps worker id to the end of its announced liveness in
	// microseconds since the epoch, server clock (a sorted set: the index
	// Workers reads). The key expires with the latest of those ends.
	live string
	// prefix starts the key of each worker (see worker).
	prefix string
}

// newPresenceKeys returns the presence keys of namespace ns.
func newPresenceKeys(ns string) presenceKeys {
	p := keyPrefix + "{" + escape(ns) + "}:"
	return presenceKeys{live: p + "workers", prefix: p + "worker:"}
}

// worker is the string key holding workerID's WorkerInfo JSON, expiring
// with the worker's announced liveness.
func (k presenceKeys) worker(workerID string) string {
	return k.prefix + escape(workerID)
}

// replyKey is the stream holding the control replies to one request.
func replyKey(ns, requestID string) string {
	return keyPrefix + escape(ns) + ":reply:" + requestID
}

// Pub/sub channels are server-wide: unlike keys, they ignore the database a
// client selected. A channel therefore names the database as well as the
// namespace, so that deployments with the same namespace on two databases
// of one server never see each other's commands.

// controlChannelPrefix starts the channels of namespace ns on database db.
func controlChannelPrefix(ns string, db int) string {
	return keyPrefix + escape(ns) + ":control:db" + strconv.Itoa(db) + ":"
}

// broadcastChannel is the pub/sub channel every worker of ns on database
// db listens to.
func broadcastChannel(ns string, db int) string {
	return controlChannelPrefix(ns, db) + "broadcast"
}

// workerChannel is the pub/sub channel of one worker of ns on database db.
func workerChannel(ns string, db int, workerID string) string {
	return controlChannelPrefix(ns, db) + "worker:" + workerID
}
