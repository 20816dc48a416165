// Package stem is a Celery-style background task platform for Go: producers
// enqueue named tasks with JSON arguments, workers claim and run them with
// leases, retries, time limits and recorded results, and operators control
// running workers (ping, inspect, stats, revoke and terminate) through a
// broker-backed control plane, with revokes that survive restarts.
//
// # Shape
//
// A program builds a Registry of tasks, opens drivers (a stemdriver.Broker,
// and optionally a ResultBackend, a RevokeStore and a ControlTransport; see
// package stemurl for opening them from URLs), and then either enqueues with
// a Client or runs a Worker. There is no global state: registries, drivers
// and loggers are values passed in.
//
// # Semantics
//
// Delivery is at least once: a task leaves the broker only after it reached
// a final state (succeeded, failed after its retries, or cancelled). A
// worker renews the leases of the tasks it holds; if it dies, the leases
// expire and other workers re-claim the tasks. Handlers should therefore be
// idempotent.
//
// A handler receives a *TaskContext, a context.Context cancelled with a
// cause: ErrTaskRevoked (a terminate revoke), ErrTimeLimit or
// ErrWorkerShutdown, told apart with errors.Is on context.Cause. Its
// Heartbeat, ExtendLease and Progress methods are checkpoints that return an
// error matching ErrTaskRevoked once a terminate revoke reached the task; the
// worker then records the task cancelled and never retries it, whatever the
// handler returns.
//
// A failed attempt is retried, after a delay chosen by the task's
// RetryPolicy, while retries remain; wrap an error in NoRetry to fail at
// once, or in RetryAfter to choose the delay. A panic is a failed attempt,
// never a crashed worker. A task name no handler is registered for is
// recorded as a failure naming the task.
package stem
