package stem

// SetTestHooks installs the worker's test seams until restore is called:
// progressChecked runs in TaskContext.Progress after it saw its task not
// yet settled and before it queues its write; settled runs once a task's
// outcome was handed to the result writer. Either may be nil.
func SetTestHooks(progressChecked, settled func(taskID string)) (restore func()) {
	testHooks.Store(&workerTestHooks{progressChecked: progressChecked, settled: settled})
	return func() { testHooks.Store(nil) }
}

// ControllerSend exposes the unexported Controller.send to the external
// tests that send a raw command (an older controller's payload, a payload
// the typed methods refuse).
var ControllerSend = (*Controller).send

// AssumeShortTasks makes w's fetch policy start as if its tasks had run
// in a nanosecond: it prefetches from its first claim until it hands its
// buffer back (or tasks that finish raise the average). Call it before Run.
func AssumeShortTasks(w *Worker) { w.fair.run.Store(1) }
