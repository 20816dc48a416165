// Package stemtype holds the value types that every part of stem shares: the
// task envelope carried by brokers, task states and results kept by result
// backends, revoke records kept by revoke stores, and the control protocol's
// commands and replies.
//
// It is a leaf package: it imports nothing of stem's, so drivers, the core and
// the CLI can all depend on it without import cycles. The JSON field names of
// these types are part of stem's wire format and CLI contract; change them
// only with a protocol version bump.
package stemtype

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// DefaultNamespace is the namespace used when none is configured.
const DefaultNamespace = "stem"

// DefaultQueue is the queue a task goes to when neither its options nor the
// enqueue call name one.
const DefaultQueue = "default"

// State is the lifecycle state of a task as recorded in a result backend.
type State string

// The task states. A task moves pending -> started -> (retry -> started)* and
// ends in one of the final states succeeded, failed or cancelled.
const (
	StatePending   State = "pending"
	StateStarted   State = "started"
	StateRetry     State = "retry"
	StateSucceeded State = "succeeded"
	StateFailed    State = "failed"
	StateCancelled State = "cancelled"
)

// Final reports whether s is a state a task never leaves.
func (s State) Final() bool {
	return s == StateSucceeded || s == StateFailed || s == StateCancelled
}

// Valid reports whether s is one of the defined states.
func (s State) Valid() bool {
	switch s {
	case StatePending, StateStarted, StateRetry, StateSucceeded, StateFailed, StateCancelled:
		return true
	}
	return false
}

// Envelope is a task message as brokers carry it.
type Envelope struct {
	// ID identifies the task across retries and redeliveries.
	ID string `json:"id"`
	// Task is the registered task name.
	Task string `json:"task"`
	// Args are the task's arguments as a JSON document.
	Args json.RawMessage `json:"args,omitempty"`
	// Queue is the queue the task was published to.
	Queue string `json:"queue"`
	// Attempt counts previous runs that ended in a retry: 0 on the first run.
	Attempt int `json:"attempt"`
	// MaxRetries, when set, overrides the task's registered option.
	MaxRetries *int `json:"maxRetries,omitempty"`
	// Priority orders tasks within a queue where the broker supports it
	// (higher first); brokers without priorities ignore it.
	Priority int `json:"priority,omitempty"`
	// Headers carry free-form metadata (tracing, the producer's identity).
	Headers map[string]string `json:"headers,omitempty"`
	// NotBefore delays the task until that time (ETA, countdown, retry
	// backoff). The zero time means now.
	NotBefore time.Time `json:"notBefore,omitzero"`
	// CreatedAt is when the producer first enqueued the task.
	CreatedAt time.Time `json:"createdAt"`
	// Sig is the producer's signature of every other field, when it has
	// signing keys (stem.SigningKeys; SigningBytes says what is signed).
	// A worker with keys dead-letters an envelope whose Sig is missing or
	// wrong; one without keys ignores it.
	Sig string `json:"sig,omitempty"`
}

// Validate reports the first missing required field of e.
func (e *Envelope) Validate() error {
	switch {
	case e == nil:
		return fmt.Errorf("stem: envelope is nil")
	case e.ID == "":
		return fmt.Errorf("stem: envelope has no id")
	case e.Task == "":
		return fmt.Errorf("stem: envelope %s has no task name", e.ID)
	case e.Queue == "":
		return fmt.Errorf("stem: envelope %s has no queue", e.ID)
	case e.Attempt < 0:
		return fmt.Errorf("stem: envelope %s has negative attempt %d", e.ID, e.Attempt)
	}
	return nil
}

// TaskError describes why a task failed or was cancelled.
type TaskError struct {
	// Message is the error's text.
	Message string `json:"message"`
	// Kind classifies the failure: "handler", "panic", "unknown_task",
	// "decode", "payload_too_large", "time_limit", "revoked", "shutdown"
	// or "crashed".
	Kind string `json:"kind,omitempty"`
}

// Progress is the last progress a task reported.
type Progress struct {
	// Percent is the completion between 0 and 100.
	Percent float64 `json:"percent"`
	// Data is optional task-defined detail as JSON.
	Data json.RawMessage `json:"data,omitempty"`
	// At is when the progress was reported.
	At time.Time `json:"at,omitzero"`
}

// Result metadata keys set on revoked tasks.
const (
	MetaRevokedReason = "revokedReason"
	MetaRevokedBy     = "revokedBy"
	MetaRevokedAt     = "revokedAt"
)

// TaskResult is a task's state as a result backend stores it.
type TaskResult struct {
	ID       string          `json:"id"`
	Task     string          `json:"task"`
	Queue    string          `json:"queue,omitempty"`
	State    State           `json:"state"`
	Attempt  int             `json:"attempt"`
	Result   json.RawMessage `json:"result,omitempty"`
	Error    *TaskError      `json:"error,omitempty"`
	Progress *Progress       `json:"progress,omitempty"`
	// Meta holds string metadata, such as revokedReason, revokedBy and
	// revokedAt for a revoked task.
	Meta map[string]string `json:"meta,omitempty"`
	// WorkerID is the worker that last ran the task.
	WorkerID string `json:"workerId,omitempty"`
	// NotBefore is when a pending or retrying task becomes due, for tasks
	// delayed by a countdown, an ETA or a retry backoff.
	NotBefore  time.Time `json:"notBefore,omitzero"`
	StartedAt  time.Time `json:"startedAt,omitzero"`
	FinishedAt time.Time `json:"finishedAt,omitzero"`
	UpdatedAt  time.Time `json:"updatedAt"`
}

// RevokeRecord is a durable revoke of one task, or of every task of one
// name (Kind RevokeKindName), as revoke stores keep it and as one line of
// the file store holds it.
//
// Stores key records by namespace and TaskID alone. A revoke by name keeps
// its name in Name and, as its TaskID, NameRevokeKey(Name): a key that
// starts with RevokeKeyPrefix (U+001F, a control character), which no task
// id may start with (a Client refuses such an id, and Validate refuses an
// id revoke of one), so id revokes and name revokes never collide, and
// every store keeps both without knowing the difference.
type RevokeRecord struct {
	Namespace string `json:"namespace"`
	TaskID    string `json:"taskId"`
	// Kind is what the record revokes: RevokeKindTask ("", one task by
	// id) or RevokeKindName (every task named Name).
	Kind string `json:"kind,omitempty"`
	// Name is the task name a RevokeKindName record revokes.
	Name string `json:"name,omitempty"`
	// Queue is the queue a RevokeKindQueuePause record pauses.
	Queue string `json:"queue,omitempty"`
	// Resumed marks a RevokeKindQueuePause record that resumes its queue:
	// it replaces the pause (by version, like any record) and expires
	// like one, so that every worker learns of it, from a command or a
	// re-sync, before a prune deletes it.
	Resumed bool `json:"resumed,omitempty"`
	// Version orders records of one task: the record with the highest
	// version is the one that applies. A controller proposes the call's
	// time in microseconds since the Unix epoch for every record of the
	// call; the revoke store assigns max(stored version + 1, proposed)
	// atomically (stemdriver.RevokeStore), so a revoke issued after another
	// one of the same task returned always has the higher version. Records
	// read back from a store or received from a controller carry the
	// assigned version.
	Version  int64     `json:"version"`
	IssuedAt time.Time `json:"issuedAt"`
	// Terminate asks a running task to stop at its next checkpoint.
	Terminate bool `json:"terminate"`
	// KillAfterMs, when positive with Terminate, makes the worker kill an
	// isolated task's child process that has not stopped within that many
	// milliseconds.
	KillAfterMs int64  `json:"killAfterMs,omitempty"`
	Reason      string `json:"reason,omitempty"`
	RequestedBy string `json:"requestedBy,omitempty"`
	// ExpiresAt is when the record stops applying and may be pruned. The
	// zero time means it never expires.
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
	// Sig is the controller's signature of every other field but Version
	// (which the revoke store assigns), when it has signing keys. A worker
	// with keys ignores a record whose Sig is missing or wrong, from a
	// command or from the store.
	Sig string `json:"sig,omitempty"`
}

// Kinds of revoke records (RevokeRecord.Kind).
const (
	// RevokeKindTask revokes one task by its id (the TaskID).
	RevokeKindTask = ""
	// RevokeKindName revokes every task of one name (the Name): a task of
	// that name that a worker meets while the record holds never starts,
	// and with Terminate a running one is cancelled.
	RevokeKindName = "name"
	// RevokeKindQueuePause pauses a queue (the Queue): while the record
	// holds, workers claim nothing from it. A resume is a newer record of
	// the queue with Resumed set.
	RevokeKindQueuePause = "queue-pause"
)

// RevokeKeyPrefix starts the store key (RevokeRecord.TaskID) of every
// record that is not a revoke of one task by id. No task id starts with
// it.
const RevokeKeyPrefix = "\x1f"

// NameRevokeKey returns the store key (RevokeRecord.TaskID) of the revoke
// of the tasks named name.
func NameRevokeKey(name string) string { return RevokeKeyPrefix + "name:" + name }

// QueuePauseKey returns the store key (RevokeRecord.TaskID) of the pause
// of queue.
func QueuePauseKey(queue string) string { return RevokeKeyPrefix + "queue-pause:" + queue }

// CheckTaskID reports whether id may be a task id: not empty, and not
// starting with RevokeKeyPrefix.
func CheckTaskID(id string) error {
	switch {
	case id == "":
		return errors.New("empty task id")
	case strings.HasPrefix(id, RevokeKeyPrefix):
		return fmt.Errorf("task id %q starts with U+001F, which is reserved for revokes by name", id)
	}
	return nil
}

// Target describes what r revokes, for messages: the task id, "name " and
// the task name, or "queue " and the queue it pauses.
func (r *RevokeRecord) Target() string {
	switch r.Kind {
	case RevokeKindName:
		return "name " + r.Name
	case RevokeKindQueuePause:
		return "queue " + r.Queue
	}
	return r.TaskID
}

// Expired reports whether r no longer applies at now.
func (r *RevokeRecord) Expired(now time.Time) bool {
	return !r.ExpiresAt.IsZero() && !now.Before(r.ExpiresAt)
}

// Validate reports the first missing or invalid field of r.
func (r *RevokeRecord) Validate() error {
	switch {
	case r.Namespace == "":
		return fmt.Errorf("stem: revoke record for task %q has no namespace", r.TaskID)
	case r.TaskID == "":
		return fmt.Errorf("stem: revoke record has no taskId")
	case r.Version <= 0:
		return fmt.Errorf("stem: revoke record for task %q has non-positive version %d", r.TaskID, r.Version)
	case r.KillAfterMs < 0:
		return fmt.Errorf("stem: revoke record for task %q has negative killAfterMs", r.TaskID)
	}
	switch r.Kind {
	case RevokeKindTask:
		if err := CheckTaskID(r.TaskID); err != nil {
			return fmt.Errorf("stem: revoke record: %w", err)
		}
		if r.Name != "" || r.Queue != "" {
			return fmt.Errorf("stem: revoke record for task %q has a name or queue but no kind", r.TaskID)
		}
	case RevokeKindName:
		if r.Name == "" {
			return fmt.Errorf("stem: revoke record of kind %q has no name", r.Kind)
		}
		if r.TaskID != NameRevokeKey(r.Name) {
			return fmt.Errorf("stem: revoke record of name %q has taskId %q, want %q", r.Name, r.TaskID, NameRevokeKey(r.Name))
		}
	case RevokeKindQueuePause:
		if r.Queue == "" {
			return fmt.Errorf("stem: revoke record of kind %q has no queue", r.Kind)
		}
		if r.TaskID != QueuePauseKey(r.Queue) {
			return fmt.Errorf("stem: pause record of queue %q has taskId %q, want %q", r.Queue, r.TaskID, QueuePauseKey(r.Queue))
		}
	default:
		return fmt.Errorf("stem: revoke record for task %q has unknown kind %q (want %q, %q or %q)", r.TaskID, r.Kind,
			RevokeKindTask, RevokeKindName, RevokeKindQueuePause)
	}
	return nil
}

// WorkerInfo describes a live worker, as announced through the control
// transport's presence and listed by Workers.
type WorkerInfo struct {
	ID          string    `json:"id"`
	Namespace   string    `json:"namespace"`
	Host        string    `json:"host"`
	PID         int       `json:"pid"`
	Queues      []string  `json:"queues"`
	Concurrency int       `json:"concurrency"`
	StartedAt   time.Time `json:"startedAt"`
	LastSeen    time.Time `json:"lastSeen"`
	// Instance identifies one run of a worker: a random token chosen anew
	// by every Worker.Run and kept in all of that run's announcements. Two
	// live announcements with the same ID and different Instance are two
	// workers claiming one id, which the control transport refuses (see
	// stemdriver.ErrWorkerIDTaken). Empty in announcements of workers that
	// predate it, and then compared like any other value.
	Instance string `json:"instance,omitempty"`
	// Inflight is how many tasks the worker was running, and Prefetched
	// how many it had claimed that waited for a free slot, when it
	// announced itself: `stem worker status` shows them without a
	// broadcast.
	Inflight   int `json:"inflight"`
	Prefetched int `json:"prefetched"`
	// Version is the version of stem the worker was built with ("" from
	// workers that predate it).
	Version string `json:"version,omitempty"`
	// IntervalMs is how often the worker announces itself, in
	// milliseconds: an announcement older than two intervals is late (0
	// from workers that predate it).
	IntervalMs int64 `json:"intervalMs,omitempty"`
	// Paused are the worker's queues that were paused when it announced
	// itself (it claims nothing from them), sorted; empty when none was.
	Paused []string `json:"paused,omitempty"`
}
