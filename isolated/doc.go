// Package isolated runs stem tasks in child processes of the worker: Go's
// analogue of a Dart isolate. A child has memory of its own and talks to
// the worker only through messages, so a panic, a crash, a leak or a
// runaway loop in a task cannot take the worker down, and a task that
// ignores every request to stop can still be killed.
//
// # Declaring isolated tasks
//
// A task with an isolated entrypoint is registered with stem.Register and
// stem.TaskOptions{Isolated: true}. The child is the worker's
// own binary, re-executed; it finds the entrypoint by task name in its own
// registry, so the program must build its registry the same way in both
// roles and serve the child role before doing anything else:
//
//	func main() {
//		reg := stem.NewRegistry()
//		stem.Register(reg, "images.render", render, stem.TaskOptions{Isolated: true})
//		isolated.ServeIfChild(reg) // in a child: serves tasks, then exits
//
//		// Only the worker (or any other role) gets here.
//		pool, err := isolated.NewPool(isolated.PoolConfig{Registry: reg, Size: 8})
//		...
//		w, err := stem.NewWorker(stem.WorkerConfig{Registry: reg, Concurrency: 8, Executor: pool, ...})
//		err = w.Run(ctx)
//		pool.Close()
//	}
//
// Programs that use stemcli.Main need neither call: Main serves the child
// role, and `worker start` builds a Pool sized to --concurrency when the
// registry has isolated tasks (programs that run the command tree of
// stemcli.New themselves call ServeIfChild first). NewPool starts one child at once and
// fails if it does not answer, or lacks an isolated entrypoint the worker's
// registry declares, so a forgotten ServeIfChild shows at start-up: in the
// child, NewPool itself fails with ErrInChild rather than start children
// of its own. Later children are checked the same way: on Linux they run
// the worker's own build through /proc/self/exe even after a deploy
// replaced the binary, and a child of another build (a PoolConfig.Path
// replaced) fails its task with an error that is retried.
//
// # Checkpoints and termination
//
// In the child the entrypoint receives a *stem.TaskContext like any
// handler. Its Heartbeat, ExtendLease and Progress travel to the worker,
// which applies them to the task exactly as for an inline task (lease
// renewal, progress in task status and `stem worker inspect`), and answer
// with nil or with the error the worker's own checkpoint returned.
//
// `stem worker revoke --terminate` cancels the task's context in the
// worker; the pool relays the cancel, the child's context is cancelled and
// its next checkpoint returns an error matching stem.ErrTaskRevoked. That
// part is cooperative: a task that never checks its context nor calls a
// checkpoint keeps running. `--kill-after DURATION` ends it: that long
// after the revoke reached the worker, the child's process group receives
// SIGTERM, then SIGKILL after PoolConfig.KillGrace, and the task ends
// cancelled. A task past its time limit, or whose lease was lost, is killed
// at once, even if a revoke cancelled it earlier; a task cancelled by the
// worker's shutdown gets PoolConfig.ShutdownGrace to return first. The
// worker applies checkpoints beside its watch for these events, so a slow
// one (an ExtendLease waiting for the broker) delays no kill.
//
// Processes a task starts belong to its child's process group. When the
// child exits, however it exits, the pool kills what is left of the group
// before it reaps the child (on Linux, where it can wait for the exit
// without reaping, so that the group's id cannot have been reused), and a
// child whose worker is gone sends SIGTERM to its group before it exits.
//
// A child that exits or crashes mid-task, panics, or breaks the protocol
// (a malformed, oversized or truncated frame, an unexpected message) fails
// its task with an error saying so, never the worker; the child is stopped
// and the next task gets a fresh one. A panicking child exits after
// reporting the panic, as its memory may be in any state.
//
// # Protocol
//
// Worker and child speak a small versioned protocol over the child's stdin
// and stdout: frames of a 4-byte big-endian length and a JSON object, with
// messages hello, run, heartbeat, extendLease, progress, reply, cancel,
// result and error. docs/isolated-protocol.md specifies it so that a
// child written in another language can speak it. The child's stderr is
// relayed to the worker's log, JSON slog records at their own level.
package isolated
