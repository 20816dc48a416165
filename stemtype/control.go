package stemtype

import (
	"encoding/json"
	"time"
)

// ControlVersion is the version of the control protocol spoken by this code.
const ControlVersion = 1

// BroadcastTarget is the target that addresses every worker of a namespace.
const BroadcastTarget = "*"

// Control command types.
const (
	CommandPing    = "ping"
	CommandInspect = "inspect"
	CommandStats   = "stats"
	CommandRevoke  = "revoke"
	// CommandShutdown stops a worker (ShutdownRequest).
	CommandShutdown = "shutdown"
	// CommandPause and CommandResume pause and resume a queue
	// (QueuePauseRequest): the worker stops, or starts again, claiming
	// from it.
	CommandPause  = "pause"
	CommandResume = "resume"
)

// Shutdown modes (ShutdownRequest.Mode).
const (
	// ShutdownWarm stops claiming and lets running tasks finish within
	// the worker's grace period (WorkerConfig.ShutdownTimeout); what has
	// not finished then is cancelled and released. As SIGTERM.
	ShutdownWarm = "warm"
	// ShutdownSoft also cancels the running tasks' contexts at once
	// (cause stem.ErrWorkerShutdown); they are released to the broker as
	// they return, for another worker to run.
	ShutdownSoft = "soft"
	// ShutdownHard releases every task the worker holds at once and
	// stops without waiting for handlers to return.
	ShutdownHard = "hard"
)

// ShutdownRequest is the payload of a shutdown command. An empty Mode is
// ShutdownWarm.
type ShutdownRequest struct {
	Mode string `json:"mode"`
}

// ShutdownReply is the payload of a shutdown reply, sent before the worker
// starts to stop.
type ShutdownReply struct {
	// Mode is the mode the worker stops in.
	Mode string `json:"mode"`
	// Inflight is how many tasks it was running.
	Inflight int `json:"inflight"`
}

// QueuePauseRequest is the payload of a pause or resume command: the
// record the controller has already written to the revoke store (Kind
// RevokeKindQueuePause; Resumed in a resume).
type QueuePauseRequest struct {
	Record RevokeRecord `json:"record"`
}

// QueuePauseReply is the payload of a pause or resume reply.
type QueuePauseReply struct {
	// Queue is the queue the command named.
	Queue string `json:"queue"`
	// Paused reports whether the worker now holds the queue paused.
	Paused bool `json:"paused"`
	// Consumes reports whether the queue is one the worker claims from.
	Consumes bool `json:"consumes"`
	// PausedQueues are the queues the worker holds paused, sorted.
	PausedQueues []string `json:"pausedQueues"`
}

// Reply statuses.
const (
	ReplyOK    = "ok"
	ReplyError = "error"
)

// ControlCommand is a message from a controller (the CLI) to workers.
type ControlCommand struct {
	RequestID string `json:"requestId"`
	Type      string `json:"type"`
	// Targets holds worker ids, or BroadcastTarget alone for every worker.
	Targets   []string        `json:"targets"`
	Payload   json.RawMessage `json:"payload,omitempty"`
	TimeoutMs int64           `json:"timeoutMs,omitempty"`
	// Version is the protocol version of the sender.
	Version int `json:"version,omitempty"`
	// IssuedAt is when the controller sent the command, set with Sig: a
	// worker with signing keys refuses a command issued outside its replay
	// window, or one whose RequestID it has seen before.
	IssuedAt time.Time `json:"issuedAt,omitzero"`
	// Sig is the controller's signature of every other field and of its
	// namespace, when it has signing keys (stem.SigningKeys).
	Sig string `json:"sig,omitempty"`
}

// Broadcast reports whether c addresses every worker.
func (c *ControlCommand) Broadcast() bool {
	if len(c.Targets) == 0 {
		return true
	}
	for _, t := range c.Targets {
		if t == BroadcastTarget {
			return true
		}
	}
	return false
}

// ControlReply is one worker's answer to a ControlCommand.
type ControlReply struct {
	RequestID string          `json:"requestId"`
	WorkerID  string          `json:"workerId"`
	Status    string          `json:"status"`
	Payload   json.RawMessage `json:"payload,omitempty"`
	Error     *ControlError   `json:"error,omitempty"`
}

// ControlError is the error of a reply whose status is "error".
type ControlError struct {
	Message string `json:"message"`
}

// PingReply is the payload of a ping reply.
type PingReply struct {
	Timestamp time.Time `json:"timestamp"`
}

// InspectRequest is the payload of an inspect command. An empty payload
// asks for the in-flight tasks alone.
type InspectRequest struct {
	// IncludeRevoked asks for the worker's revoke records in the reply's
	// Revoked list. A worker may hold a million of them, so it is off unless
	// asked for.
	IncludeRevoked bool `json:"includeRevoked"`
	// Limit, with IncludeRevoked, caps the records returned at the Limit
	// newest (highest version first). Zero means every record; a negative
	// limit is answered with an error.
	Limit int `json:"limit,omitempty"`
	// IncludeReserved asks for the tasks the worker claimed that wait for
	// a free slot (its prefetch buffer) in the reply's Reserved list.
	IncludeReserved bool `json:"includeReserved,omitempty"`
	// IncludeScheduled asks for the delayed tasks (a countdown or an ETA
	// not yet reached) of the queues the worker consumes, soonest first,
	// in the reply's Scheduled list: they wait in the broker, not in a
	// worker, so every worker of a queue lists them.
	IncludeScheduled bool `json:"includeScheduled,omitempty"`
	// ScheduledLimit caps the Scheduled list per queue; zero means
	// DefaultScheduledLimit, a negative limit is answered with an error.
	ScheduledLimit int `json:"scheduledLimit,omitempty"`
}

// DefaultScheduledLimit is how many delayed tasks per queue an inspect
// reply lists when the request sets no ScheduledLimit.
const DefaultScheduledLimit = 100

// ScheduledTask is a delayed task, in an inspect reply: published with a
// countdown or an ETA, waiting in the broker until NotBefore.
type ScheduledTask struct {
	ID        string    `json:"id"`
	Task      string    `json:"task"`
	Queue     string    `json:"queue"`
	Attempt   int       `json:"attempt"`
	NotBefore time.Time `json:"notBefore"`
}

// ReservedTask is a task a worker claimed that waits for a free slot, in an
// inspect reply. A worker claims beyond its free slots only while its tasks
// run shorter than a few claim round trips, and hands waiting tasks back to
// the broker when every slot stays busy for a short bound (see "Fair
// dispatch" in docs/architecture.md), so WaitedMs stays small.
type ReservedTask struct {
	ID      string `json:"id"`
	Task    string `json:"task"`
	Queue   string `json:"queue"`
	Attempt int    `json:"attempt"`
	// ClaimedAt is when the worker claimed the task.
	ClaimedAt time.Time `json:"claimedAt"`
	// WaitedMs is how long the task has waited since, in milliseconds.
	WaitedMs int64 `json:"waitedMs"`
}

// ActiveTask is one in-flight task in an inspect reply.
type ActiveTask struct {
	ID              string    `json:"id"`
	Task            string    `json:"task"`
	Queue           string    `json:"queue"`
	Attempt         int       `json:"attempt"`
	StartedAt       time.Time `json:"startedAt"`
	RuntimeMs       int64     `json:"runtimeMs"`
	Isolated        bool      `json:"isolated"`
	Progress        *Progress `json:"progress"`
	LastHeartbeatAt time.Time `json:"lastHeartbeatAt,omitzero"`
	// Terminating is true once a terminate revoke reached the task and it
	// has not stopped yet.
	Terminating bool `json:"terminating"`
}

// InspectReply is the payload of an inspect reply.
type InspectReply struct {
	Inflight int          `json:"inflight"`
	Active   []ActiveTask `json:"active"`
	// Revoked holds the worker's revoke records, newest (highest version)
	// first, only when the request asked for them (then it is a list, empty
	// or not), and at most the request's Limit of them.
	Revoked []RevokeRecord `json:"revoked,omitzero"`
	// RevokedTotal is how many revoke records the worker holds, whether
	// or not they were asked for: a Revoked list shorter than RevokedTotal
	// was cut at the request's Limit.
	RevokedTotal int `json:"revokedTotal"`
	// Reserved holds the tasks the worker claimed that wait for a free
	// slot, longest waiting first, only when the request asked for them
	// (then it is a list, empty or not).
	Reserved []ReservedTask `json:"reserved,omitzero"`
	// Scheduled holds the delayed tasks of the worker's queues, soonest
	// first, at most the request's ScheduledLimit per queue, only when the
	// request asked for them and the broker can list them (then it is a
	// list, empty or not). ScheduledTotal counts them all.
	Scheduled      []ScheduledTask `json:"scheduled,omitzero"`
	ScheduledTotal int64           `json:"scheduledTotal,omitzero"`
}

// StatsReply is the payload of a stats reply.
type StatsReply struct {
	Namespace   string `json:"namespace"`
	Host        string `json:"host"`
	PID         int    `json:"pid"`
	Concurrency int    `json:"concurrency"`
	Prefetch    int    `json:"prefetch"`
	Inflight    int    `json:"inflight"`
	Processed   int64  `json:"processed"`
	Succeeded   int64  `json:"succeeded"`
	Failed      int64  `json:"failed"`
	Retried     int64  `json:"retried"`
	Cancelled   int64  `json:"cancelled"`
	// ResultsGivenUp counts the settled tasks whose outcome the worker
	// could not record (or acknowledge) before its writer gave up: they
	// were left to lease expiry and run again elsewhere. Non-zero means
	// the result backend or broker is failing.
	ResultsGivenUp int64            `json:"resultsGivenUp"`
	Queues         map[string]int64 `json:"queues"`
	UptimeMs       int64            `json:"uptimeMs"`
	Timestamp      time.Time        `json:"timestamp"`
	// Stores are the worker's backends (redacted URLs), when its program
	// described them (WorkerConfig.Stores).
	Stores *StoreInfo `json:"stores,omitempty"`
	// Paused are the worker's queues that are paused (it does not claim
	// from them), sorted; [] when none is.
	Paused []string `json:"paused"`
	// SignatureRejected counts what a worker with signing keys refused for
	// a missing or bad signature since it started: control commands
	// (replayed ones included), tasks (dead-lettered) and revoke records
	// (from commands or the store; one record counts once per read).
	// Absent when zero.
	SignatureRejected int64 `json:"signatureRejected,omitempty"`
}

// RevokeRequest is the payload of a revoke command: the records the
// controller has already written to the revoke store.
type RevokeRequest struct {
	Records []RevokeRecord `json:"records"`
}

// RevokeReply is the payload of a revoke reply.
type RevokeReply struct {
	// Tasks are the ids whose records were applied.
	Tasks []string `json:"tasks"`
	// Names are the task names whose revokes by name were applied.
	Names []string `json:"names,omitempty"`
	// Inflight are the applied ids running on this worker, now signalled.
	Inflight []string `json:"inflight"`
	// Ignored are ids whose record was older than the one already held
	// (a revoke by name is listed as "name NAME").
	Ignored []string `json:"ignored"`
	// Expired are ids whose record had already expired ("name NAME" for a
	// revoke by name).
	Expired []string `json:"expired"`
	// Held are the named ids of tasks this worker has started, whatever the
	// revoke asks: running, or finished with the outcome not yet recorded
	// (a task waiting in its prefetch meets the revoke before it starts). The worker records their state (a task
	// already running when a revoke without terminate arrives finishes),
	// so a controller must not mark them cancelled: the result backend
	// may not show their start yet.
	Held []string `json:"held,omitempty"`
	// Rejected are the ids ("name NAME", "queue QUEUE") whose record a
	// worker with signing keys refused: unsigned, or badly signed. It
	// applied nothing of them.
	Rejected []string `json:"rejected,omitempty"`
}
