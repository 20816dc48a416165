// Package stem is a Celery-style background task platform for Go: producers
// enqueue named tasks with JSON arguments, workers claim and run them with
// leases, retries, time limits and recorded results, and operators control
// running workers (ping, inspect, stats, revoke and terminate) through a
// broker-backed control plane, with revokes that survive restarts.
//
// There is no global state: registries, drivers and loggers are values
// passed in. The drivers (a stemdriver.Broker, and optionally a
// ResultBackend, a RevokeStore and a ControlTransport) come from one package
// per technology (stemmem, stemfile, stemredis), or from URLs through
// package stemurl.
//
// # Tasks
//
// A program builds a Registry and adds each task with Register: a name, a
// handler whose arguments are decoded from JSON into a type of its own, and
// TaskOptions (queue, retries and their RetryPolicy, lease, time limit,
// priority, and Isolated to run it in a child process; see package
// isolated). Producers and workers build the registry the same way.
//
// # Producing
//
// A Client enqueues tasks by name (Client.Enqueue, Client.EnqueueBatch),
// with per-call EnqueueOptions (id, queue, countdown or ETA, retries,
// priority), and reads their recorded state (Client.Status) or waits for
// their final state (Client.Wait).
//
// # Running
//
// A Worker claims tasks from its queues and runs them, Concurrency at a
// time, until the context of Worker.Run is cancelled; it then shuts down
// warmly. A handler receives a *TaskContext, a context.Context cancelled
// with a cause: ErrTaskRevoked (a terminate revoke), ErrTimeLimit,
// ErrLeaseLost or ErrWorkerShutdown, told apart with errors.Is on
// context.Cause. Its Heartbeat, ExtendLease and Progress methods are
// checkpoints that return an error matching ErrTaskRevoked once a terminate
// revoke reached the task; the worker then records the task cancelled and
// never retries it, whatever the handler returns.
//
// A failed attempt is retried, after a delay chosen by the task's
// RetryPolicy, while retries remain; wrap an error in NoRetry to fail at
// once, or in RetryAfter to choose the delay. A panic is a failed attempt
// (a PanicError), never a crashed worker. A task name no handler is
// registered for is retried with a backoff (WorkerConfig.UnknownTaskRetries:
// a rolling deploy may bring its handler), then recorded as a failure naming
// the task (ErrUnknownTask).
//
// # Controlling
//
// A Controller sends commands to the live workers of a namespace, or to
// some of them (Target), and collects their replies: Ping, Inspect, Stats
// and Revoke, which also terminates running tasks. Decode reads the
// replies' typed payloads. The `stem` command (package stemcli) is built on
// the same calls.
//
// # Semantics
//
// Delivery is at least once: a task leaves the broker only after it reached
// a final state (succeeded, failed after its retries, or cancelled), and a
// final state is final. A worker renews the leases of the tasks it holds;
// if it dies, the leases expire and other workers re-claim the tasks.
// Handlers should therefore be idempotent. A later revoke of a task beats
// an earlier one, and a revoke is stored before it is published, so
// workers that start later honour it.
//
// # Testing
//
// Package stemtest runs a task's handler in a test with its checkpoints
// recorded (and a terminate simulated), or runs a real worker on the
// in-memory backend that a test drives to completion.
package stem
