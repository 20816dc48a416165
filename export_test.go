package stem

import (
	"time"

	"github.com/stem-go/stem/internal/settle"
)

// SetTestHooks installs w's test seams; call it before w.Run, and never
// after: progressChecked runs in TaskContext.Progress after it saw its task
// not yet settled and before it queues its write; settled runs once a
// task's outcome was handed to the result writer, or settled without it
// (a release). Either may be nil. The seams are w's own, so tests running
// in parallel never see each other's.
func SetTestHooks(w *Worker, progressChecked, settled func(taskID string)) {
	if w.ran.Load() {
		panic("stem: SetTestHooks called after Run")
	}
	w.hooks = testHooks{progressChecked: progressChecked, settled: settled}
}

// ControllerSend exposes the unexported Controller.send to the external
// tests that send a raw command (an older controller's payload, a payload
// the typed methods refuse).
var ControllerSend = (*Controller).send

// SetWriterGiveUp makes w's settlement writer give up on a failing result
// write or broker settlement after d (settle.Config.GiveUpAfter) rather
// than settle.DefaultGiveUpAfter; call it before w.Run, and never after.
func SetWriterGiveUp(w *Worker, d time.Duration) {
	if w.ran.Load() {
		panic("stem: SetWriterGiveUp called after Run")
	}
	w.writer = settle.New(settle.Config{Broker: w.cfg.Broker, Results: w.cfg.Results, Logger: w.log,
		Done: w.jobs.Forget, GiveUpAfter: d})
}

// AssumeShortTasks makes w's fetch policy start as if its tasks had run
// in a nanosecond: it prefetches from its first claim until it hands its
// buffer back (or tasks that finish raise the average). Call it before Run.
func AssumeShortTasks(w *Worker) { w.fair.run.Store(1) }
