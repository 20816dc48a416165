// Package stemdriver is the seam between stem's core and its backends: the
// Broker, ResultBackend, RevokeStore and ControlTransport interfaces, and the
// contract each implementation keeps, written in the doc comments below.
//
// Drivers are thin. Each method does one atomic thing and never retries:
// retries, backoff, lease renewal, revoke checks and error classification live
// once in the core (package stem). No backend type ever appears in these
// interfaces; a backend's own handles travel as opaque strings.
//
// Every implementation runs the conformance suite in package stemdrivertest
// against itself.
package stemdriver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// ErrNotFound is returned when a looked-up task result does not exist (or has
// expired).
var ErrNotFound = errors.New("stem: not found")

// ErrLeaseLost is returned by lease operations on a delivery the caller no
// longer holds: its lease expired and another consumer re-claimed it, or it
// was already acknowledged.
var ErrLeaseLost = errors.New("stem: lease lost")

// ErrClosed is returned by operations on a closed driver.
var ErrClosed = errors.New("stem: driver closed")

// ErrWorkerIDTaken is matched (errors.Is) by the error ControlTransport.Announce
// returns when another live instance of the namespace holds the worker id.
// The error is a *WorkerIDTakenError naming that instance.
var ErrWorkerIDTaken = errors.New("stem: worker id taken")

// WorkerIDTakenError is the error of an Announce refused because Live, a
// different instance (WorkerInfo.Instance) with the same worker id, is live
// in the namespace. It matches ErrWorkerIDTaken. Its message names the live
// worker's host and pid, so that an operator can find the process that holds
// the id; a worker that was killed without withdrawing holds it until its
// announcement's ttl passes.
type WorkerIDTakenError struct {
	// Live is the announcement that holds the id, as stored.
	Live stemtype.WorkerInfo
}

// Error says which worker holds the id: "stem: worker ID: id is live on
// host H pid P (started T, last seen T)".
func (e *WorkerIDTakenError) Error() string {
	msg := fmt.Sprintf("stem: worker %s: id is live on host %s pid %d", e.Live.ID, e.Live.Host, e.Live.PID)
	var when []string
	if !e.Live.StartedAt.IsZero() {
		when = append(when, "started "+e.Live.StartedAt.UTC().Format(time.RFC3339))
	}
	if !e.Live.LastSeen.IsZero() {
		when = append(when, "last seen "+e.Live.LastSeen.UTC().Format(time.RFC3339))
	}
	if len(when) > 0 {
		msg += " (" + strings.Join(when, ", ") + ")"
	}
	return msg
}

// Unwrap returns ErrWorkerIDTaken, so that errors.Is matches it.
func (e *WorkerIDTakenError) Unwrap() error { return ErrWorkerIDTaken }

// Options are the settings every driver is opened with.
type Options struct {
	// Namespace isolates one stem deployment on shared infrastructure. A
	// broker, result backend or control transport opened with namespace A
	// never sees the data of namespace B.
	Namespace string
	// Logger receives the driver's own diagnostics. Nil means slog.Default.
	Logger *slog.Logger
}

// Delivery is one claimed message together with the handle needed to
// acknowledge it.
type Delivery struct {
	// Envelope is the decoded task. It is nil when the stored message could
	// not be decoded; DecodeErr then says why and Raw holds the bytes.
	Envelope *stemtype.Envelope
	// DecodeErr is set when the message could not be decoded.
	DecodeErr error
	// Raw is the message as stored.
	Raw []byte
	// Queue is the queue the message was claimed from.
	Queue string
	// Receipt is the driver's opaque handle for this claim (a stream entry
	// id, a row id). It is only meaningful to the driver that issued it.
	Receipt string
	// Redelivered is true when this message may have been delivered
	// before: its lease expired and it was re-claimed, it was released
	// (at shutdown), or the broker cannot tell, and then it is true, to be
	// safe. It is false only when the broker knows this is the first
	// delivery of the message. The worker checks the result backend for a
	// final state only for redelivered messages, so a false here on a
	// redelivery would run a finished task again.
	Redelivered bool
}

// ClaimRequest asks a broker for ready messages.
type ClaimRequest struct {
	// Queues are read in the order given; a broker may serve later queues
	// when earlier ones are empty.
	Queues []string
	// Consumer identifies the claiming worker (its id).
	Consumer string
	// Max is the most messages to return; at least 1.
	Max int
	// Lease is how long the claimed messages stay invisible to other
	// consumers unless extended. After it passes, any consumer may re-claim
	// them.
	Lease time.Duration
	// Wait is how long Claim may block when nothing is ready. Zero means
	// return at once.
	Wait time.Duration
}

// Broker moves task envelopes from producers to workers with at-least-once
// delivery.
//
// Contract:
//   - Publish stores every envelope or none is acknowledged as stored (a
//     failure may leave some stored; producers retry with the same ids).
//     An envelope whose NotBefore is in the future is not claimable before
//     that time.
//   - Publish stores each envelope given as a message of its own, exactly
//     once per call: the same envelope given twice, in one call or two,
//     ready or delayed alike, is two messages and is delivered twice.
//     Brokers never deduplicate by id or content. A duplicate publish is
//     run twice; its second run cannot change the recorded final state
//     (the first final state wins in every ResultBackend).
//   - Within one queue, messages of equal priority are claimed in the order
//     they were published (within one call and across calls of one
//     producer), and delayed ones in order of NotBefore once due. A
//     message whose lease expired is claimed before the messages of equal
//     priority published after it, so that a dead worker's tasks do not
//     wait for a backlog (a broker claiming from a cursor may serve the
//     messages after its cursor first, for up to a second: stempostgres).
//     Order between a due delayed message and ready ones, and the place
//     of a released message, are the backend's.
//   - Claim returns between 0 and Max ready messages leased to the consumer,
//     blocking up to Wait (or until ctx ends) when none is ready; returning
//     fewer than Max, or none, is normal. Messages whose lease expired are
//     ready again and are re-claimed with their envelope unchanged. When
//     Claim returns deliveries together with an error (one of several
//     queues failed), the deliveries are leased all the same and the caller
//     handles them.
//   - Claim sets Delivery.Redelivered on every message that was claimed
//     before: re-claimed after its lease expired, or claimed again after
//     Release. It is false only on a message's first claim, and a message
//     stored by Publish or by Retry (next is a new message) is first
//     claimed with it false. A broker that cannot tell sets it true. The
//     worker acknowledges a redelivered message whose task's result is
//     already final without running it, and checks no first delivery.
//   - A message leaves the broker only by Ack, Retry or DeadLetter.
//   - The caller holds a delivery from its Claim until it is acked,
//     retried, released or dead-lettered, or until its lease expired and
//     another Claim re-claimed the message (a backend may also end it when
//     the lease expires). ExtendLease, Ack, Retry, Release and DeadLetter of
//     a delivery no longer held return an error matching ErrLeaseLost and
//     change nothing: the message stays with its current holder, is not
//     made ready, and nothing is dead-lettered. Ack and Release of several
//     deliveries still act on the held ones.
//   - ExtendLease pushes the lease deadline to now+lease.
//   - Retry replaces the delivered message with next (same id, usually a
//     higher attempt and a later NotBefore, possibly another queue) in one
//     atomic step, only while the caller holds the delivery. So Retry is
//     idempotent: of two Retries of one delivery (a replay after an error
//     whose outcome was unknown), at most one stores next; the other
//     returns ErrLeaseLost and stores nothing.
//   - Release makes held messages ready again at once, unchanged (shutdown).
//   - DeadLetter removes the message from the queue and keeps its raw bytes
//     with the reason, where the broker can, so nothing is silently lost.
//   - Depth counts ready plus delayed messages of a queue, excluding leased
//     ones.
type Broker interface {
	Publish(ctx context.Context, envs ...*stemtype.Envelope) error
	Claim(ctx context.Context, req ClaimRequest) ([]Delivery, error)
	ExtendLease(ctx context.Context, d Delivery, lease time.Duration) error
	Ack(ctx context.Context, ds ...Delivery) error
	Retry(ctx context.Context, d Delivery, next *stemtype.Envelope) error
	Release(ctx context.Context, ds ...Delivery) error
	DeadLetter(ctx context.Context, d Delivery, reason string) error
	Depth(ctx context.Context, queue string) (int64, error)
	Close() error
}

// DelayedLister is implemented by brokers that can list their delayed
// messages, for `stem worker inspect --scheduled`.
//
// Contract: Delayed returns the envelopes of at most limit delayed messages
// of queue (published with a NotBefore in the future and not yet
// claimable), soonest NotBefore first, and how many delayed messages the
// queue holds in all. A message that fell due may still be listed until
// the broker makes it ready. Listing changes nothing.
type DelayedLister interface {
	Delayed(ctx context.Context, queue string, limit int) ([]*stemtype.Envelope, int64, error)
}

// ResultBackend stores task states, results, errors, progress and metadata.
//
// Contract:
//   - Put upserts every result by id, replacing the whole stored record;
//     results given in one call for the same id are applied in order.
//   - Final states are final: a stored result whose state is succeeded,
//     failed or cancelled is never replaced, by Put or by PutIfState. A
//     write over it (a progress update, a started from a redelivery or a
//     late checkpoint, a pending from a re-enqueue, a retry, or another
//     final state: the first final state wins) is skipped silently, and
//     the rest of the call is applied; it is not an error, since the task
//     already has its outcome. The check and the write are one atomic step
//     against every other writer, on any connection or host. A final state
//     replacing a state that is not final is an ordinary write.
//   - Get returns the stored result or an error matching ErrNotFound.
//   - GetMany returns, in input order, the stored result of each id, nil
//     for an id with none, in as few round trips as the backend allows (the
//     worker checks a claimed batch with one call).
//   - Stored results may expire after a retention period set when the
//     backend is opened.
type ResultBackend interface {
	Put(ctx context.Context, results ...*stemtype.TaskResult) error
	Get(ctx context.Context, id string) (*stemtype.TaskResult, error)
	GetMany(ctx context.Context, ids ...string) ([]*stemtype.TaskResult, error)
	Close() error
}

// FinalGetter is implemented by result backends that can read final
// results alone more cheaply than GetMany (Redis keeps them apart from the
// other states). The worker checks the redelivered deliveries of a claimed
// batch (Delivery.Redelivered) with it when the backend has it, and with
// GetMany otherwise.
//
// Contract: GetFinalMany returns, in input order, the stored result of
// each id when its state is final (succeeded, failed, cancelled), nil for
// an id with none or with a state that is not final.
type FinalGetter interface {
	GetFinalMany(ctx context.Context, ids ...string) ([]*stemtype.TaskResult, error)
}

// ResultAcker is implemented by brokers that can record results and
// acknowledge deliveries in one atomic step when the result backend is one
// of the same store (Postgres: one transaction in one round trip). The
// worker's settlement writer then records a batch's outcomes and
// acknowledges its deliveries with one PutAck, in place of a Put and then
// an Ack, whenever AcksWith(its result backend) reports true.
//
// Contract:
//   - AcksWith reports whether PutAck can write to rb; false for a result
//     backend of another store, or one it cannot write atomically with
//     its own acknowledgements.
//   - PutAck applies results to rb exactly as rb.Put would (final states
//     stay final; the same id twice applies in order) and acknowledges ds
//     as Ack would, in one atomic step: if it returns an error that does
//     not match ErrLeaseLost, none of it happened. Deliveries no longer
//     held are left alone and reported as Ack reports them (an error
//     matching ErrLeaseLost), while the results and the other
//     acknowledgements are applied.
type ResultAcker interface {
	AcksWith(rb ResultBackend) bool
	PutAck(ctx context.Context, rb ResultBackend, results []*stemtype.TaskResult, ds []Delivery) error
}

// RevokePublisher is implemented by control transports that can store
// revoke records and publish a control message in one atomic step when the
// revoke store is one of the same store (Postgres: the upsert and the
// NOTIFY commit together, in one round trip). The controller revokes
// through it, publishing a command built from the records it proposes, so
// that a terminate reaches the workers one round trip sooner.
//
// Contract:
//   - PublishesWith reports whether UpsertPublish can write to rs.
//   - UpsertPublish stores recs in rs exactly as rs.Upsert would and
//     returns them as stored. In the same atomic step it publishes msg to
//     targets, as Publish would, only if every record was stored with the
//     version it proposed (so that msg, built from recs, says what the
//     store holds), and reports whether it did; when it did not, the
//     caller publishes a message built from the stored records. An error
//     means nothing was stored and nothing published.
type RevokePublisher interface {
	PublishesWith(rs RevokeStore) bool
	UpsertPublish(ctx context.Context, rs RevokeStore, recs []stemtype.RevokeRecord, targets []string, msg []byte) (stored []stemtype.RevokeRecord, published bool, err error)
}

// PendingPublisher is implemented by brokers that can record tasks' first
// states in a result backend and publish the tasks in one round trip, where
// the two share a server (a Redis broker and result backend on one server
// and database; a Postgres broker and result backend on one pool, where it
// is one transaction). A Client enqueues through it when its broker has
// it.
//
// Contract: PublishWithResults returns false, and does nothing, when the
// broker cannot write to rb alongside its own messages; the caller then
// calls rb.Put and Publish itself. Otherwise it stores results as rb.Put
// would and envs as Publish would, each result before any envelope, so a
// worker never finds a message whose state is not recorded yet, and
// returns true. Results must not be final (it returns false for a final
// one). When it fails, some results may be stored and some envelopes
// published.
type PendingPublisher interface {
	PublishWithResults(ctx context.Context, rb ResultBackend, results []*stemtype.TaskResult, envs []*stemtype.Envelope) (bool, error)
}

// ConditionalPutter is implemented by result backends that can replace a
// stored result only while its state is one of a given set, atomically. The
// controller uses it to mark a revoked task cancelled without overwriting a
// state a worker recorded meanwhile.
//
// Contract: PutIfState stores r (as Put would) only when a result with r's
// id is stored and its state is one of states, in one atomic step, and
// reports whether it stored r. A stored final state is never replaced,
// even when states names it (see ResultBackend): PutIfState then reports
// false.
type ConditionalPutter interface {
	PutIfState(ctx context.Context, r *stemtype.TaskResult, states ...stemtype.State) (bool, error)
}

// RevokeStore keeps revoke records durably.
//
// Contract:
//   - Upsert stores every record, each with version max(stored.Version+1,
//     proposed Version) for its namespace and task (the proposed Version
//     when none is stored), in one atomic step per record against every
//     other writer, and returns the records in input order with the
//     versions they were stored with; callers publish those. So a revoke
//     issued after another one of the same task returned always wins,
//     however far ahead of the clock the earlier one's versions were
//     (DESIGN.md §2.3). Records of one call apply in order: the same task
//     given twice is stored twice, the later one with the higher version.
//     Concurrent writers, from one process or many hosts, converge: each
//     task holds the record applied last, which has the highest version
//     ever assigned to it. A task stored at the highest int64 version
//     cannot take another record: Upsert then returns an error.
//   - A record that has already expired is stored like any other, listed
//     until pruned, and deleted by the next Prune.
//   - List returns every stored record of the namespace, expired ones
//     included until pruned, in no particular order.
//   - Prune deletes the namespace's records that expired at or before now
//     and returns how many it deleted. A store with a clock of its own (a
//     Redis server's TIME) compares expiry against that clock and ignores
//     now, so that workers whose clocks disagree prune alike; stores
//     without one (memory, a file) use now.
//   - Pruned revokes stay gone: Prune leaves a tombstone of each record it
//     deletes (namespace, task, version), kept for RevokeTombstoneRetention
//     after the prune by the same clock. While a task has a tombstone and
//     no stored record, Upsert ignores a record of it whose proposed
//     version is at or below the tombstone's (a late write of a revoke, or
//     of a pause, that the pruned record had superseded): it stores
//     nothing for that record and returns it with Version 0, which callers
//     must not publish. A record proposing a higher version is stored as
//     usual, at its proposed version. Tombstones are never listed (List,
//     ListChanges), and a Prune deletes those past their retention.
//   - Namespaces never mix.
type RevokeStore interface {
	Upsert(ctx context.Context, recs ...stemtype.RevokeRecord) ([]stemtype.RevokeRecord, error)
	List(ctx context.Context, namespace string) ([]stemtype.RevokeRecord, error)
	Prune(ctx context.Context, namespace string, now time.Time) (int, error)
	Close() error
}

// RevokeTombstoneRetention is how long a revoke store keeps the tombstone
// of a pruned record (see RevokeStore): far longer than any write of the
// record can be in flight, short enough that tombstones do not pile up.
const RevokeTombstoneRetention = 24 * time.Hour

// RevokeChangeLister is implemented by revoke stores that can list only
// the records stored since an earlier listing, so that a worker's periodic
// re-sync costs O(changes), not a read of every record (a million of them,
// every 30 seconds, on every worker). The worker uses it when the store has
// it, and List otherwise.
//
// Contract:
//   - ListChanges with the cursor "" returns every stored record of the
//     namespace, as List does, and a cursor.
//   - ListChanges with a cursor it returned earlier for the namespace
//     returns at least every record stored by Upsert in the namespace
//     after that earlier call began (records stored before may come again),
//     and the cursor to pass next time. A task upserted several times may
//     be listed more than once; the one listed last is the newest. Records
//     deleted by Prune are not listed.
//   - When the store cannot tell what changed since cursor (the cursor is
//     not one it issued, or the store was emptied or replaced since), it
//     returns every record, as for "". It never misses a change.
//   - Namespaces never mix: a cursor belongs to its namespace.
type RevokeChangeLister interface {
	ListChanges(ctx context.Context, namespace, cursor string) (recs []stemtype.RevokeRecord, next string, err error)
}

// ControlTransport carries control commands from controllers to the workers
// of one namespace, and their replies back.
//
// Contract:
//   - Publish with no targets, or with stemtype.BroadcastTarget among them,
//     reaches every subscription of the namespace open at that time; with
//     worker ids it reaches exactly the subscriptions of those ids. A
//     broadcast is never load-balanced between subscribers.
//   - Messages are opaque bytes: the transport neither decodes nor
//     validates them, so a malformed message reaches the worker, which
//     answers it with an error.
//   - Delivery to subscribers is best effort (a subscriber that is
//     disconnected misses messages); the core compensates by re-syncing
//     revokes from the revoke store.
//   - Reply stores a reply under its request id for a short time (at least
//     a minute); Replies delivers, in order, every reply stored for the
//     request id, including those stored before Replies was called, until fn
//     returns false or ctx ends (then it returns ctx.Err()).
//   - A namespace lives in one backend scope (a Redis database, a Postgres
//     database and schema, a SQLite file): commands, replies and presence
//     of a namespace in one scope never reach the same namespace in
//     another, even where the backend's own mechanism ignores the scope
//     (Redis pub/sub is server-wide).
//   - Announce records a worker as live until ttl passes without another
//     Announce; Workers lists the live ones (never one whose ttl passed).
//   - One worker per id: Announce checks and writes atomically, and
//     refuses, with a *WorkerIDTakenError matching ErrWorkerIDTaken, while
//     a live announcement of the same id carries another Instance; it then
//     changes nothing. Announcing again with the same Instance refreshes
//     the ttl and replaces the info. Once the live announcement's ttl
//     passed (its worker died without withdrawing), the id is free.
//   - Withdraw(workerID, instance) removes the announcement of workerID
//     only when it carries instance, so that a worker refused at start
//     never withdraws the one that holds its id. Withdrawing what is not
//     announced is not an error.
type ControlTransport interface {
	Publish(ctx context.Context, targets []string, msg []byte) error
	Subscribe(ctx context.Context, workerID string) (ControlSubscription, error)
	Reply(ctx context.Context, requestID string, msg []byte) error
	Replies(ctx context.Context, requestID string, fn func(msg []byte) bool) error
	Announce(ctx context.Context, info stemtype.WorkerInfo, ttl time.Duration) error
	Withdraw(ctx context.Context, workerID, instance string) error
	Workers(ctx context.Context) ([]stemtype.WorkerInfo, error)
	Close() error
}

// ControlSubscription is one worker's stream of control messages.
type ControlSubscription interface {
	// C delivers messages addressed to the worker, broadcasts included. It
	// is closed when the subscription is closed.
	C() <-chan []byte
	// Close ends the subscription. It is safe to call more than once.
	Close() error
}
