// Package stemtest helps test programs that use stem, on the in-memory
// backend, with no service to run.
//
// Run runs one attempt of a task's handler in the test, with a TaskContext
// that records its checkpoints, and says what a worker would record: the
// result, or the error and whether the task would be retried, failed or
// cancelled. RunOptions.TerminateAt makes a checkpoint meet a terminate
// revoke, to test that a handler stops when it is told to:
//
//	func TestResize(t *testing.T) {
//		reg := stem.NewRegistry()
//		images.Register(reg) // the program's own registration
//
//		out := stemtest.Run(t, reg, "images.resize", images.ResizeArgs{Width: 64}, stemtest.RunOptions{})
//		if out.State != stemtype.StateSucceeded || len(out.Progress) == 0 {
//			t.Fatalf("got %s (%v) with %d progress reports", out.State, out.Err, len(out.Progress))
//		}
//
//		out = stemtest.Run(t, reg, "images.resize", images.ResizeArgs{Width: 64}, stemtest.RunOptions{TerminateAt: 1})
//		if out.State != stemtype.StateCancelled || !errors.Is(out.Err, stem.ErrTaskRevoked) {
//			t.Fatalf("a terminated resize: %s (%v)", out.State, out.Err)
//		}
//	}
//
// NewWorker runs a real worker, client and controller on an in-memory
// backend of their own, for tests of the whole path: enqueue, run, retry,
// revoke and terminate, results. The worker is ready when NewWorker
// returns and stops when the test ends; Wait and Drain wait for final
// states, never for a fixed time:
//
//	func TestMail(t *testing.T) {
//		reg := stem.NewRegistry()
//		mail.Register(reg)
//		w := stemtest.NewWorker(t, reg, stem.WorkerConfig{})
//
//		w.Enqueue("mail.welcome", mail.WelcomeArgs{To: "gopher@example.com"}, stem.EnqueueOptions{})
//		w.Enqueue("mail.digest", nil, stem.EnqueueOptions{})
//		for _, res := range w.Drain() {
//			if res.State != stemtype.StateSucceeded {
//				t.Errorf("%s: %s %+v", res.Task, res.State, res.Error)
//			}
//		}
//	}
//
// Drain waits for the tasks enqueued through Worker.Enqueue; wait for
// tasks enqueued by the code under test with Worker.Wait and their ids.
package stemtest
