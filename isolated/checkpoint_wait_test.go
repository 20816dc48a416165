package isolated

import (
	"context"
	"encoding/json"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// heldProgress holds a task's Progress checkpoint until release is
// closed, after announcing the child's pid (the progress data) on
// entered.
type heldProgress struct {
	entered  chan int
	release  chan struct{}
	returned atomic.Bool
}

func (h *heldProgress) Heartbeat() error                { return nil }
func (h *heldProgress) ExtendLease(time.Duration) error { return nil }
func (h *heldProgress) Progress(_ float64, data json.RawMessage) error {
	var pr struct {
		PID int `json:"pid"`
	}
	_ = json.Unmarshal(data, &pr)
	h.entered <- pr.PID
	<-h.release
	h.returned.Store(true)
	return nil
}

// TestRunEndsAfterItsCheckpoints: a run that ends while one of its
// checkpoints is still being applied (its child died, or its time limit
// killed it) returns only once that checkpoint returned, so that nothing
// of the task (a progress write) reaches the worker after its outcome.
func TestRunEndsAfterItsCheckpoints(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		end  func(t *testing.T, pid int, cancel context.CancelCauseFunc)
	}{
		{"child dies", func(t *testing.T, pid int, _ context.CancelCauseFunc) {
			pr, err := os.FindProcess(pid)
			if err == nil {
				err = pr.Kill()
			}
			if err != nil {
				t.Fatalf("kill child %d: %v", pid, err)
			}
		}},
		{"time limit", func(_ *testing.T, _ int, cancel context.CancelCauseFunc) { cancel(stem.ErrTimeLimit) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var once sync.Once
			waiting := make(chan struct{})
			p := internalPool(t, PoolConfig{}, hooks{ckWait: func() { once.Do(func() { close(waiting) }) }})
			sig := &heldProgress{entered: make(chan int, 1), release: make(chan struct{})}
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			task := &stem.Task{Name: "test.progress-pid", Isolated: func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }}
			tc := stem.NewTaskContext(ctx, stem.TaskInfo{ID: "p", Task: task.Name}, sig, nil)
			done := make(chan error, 1)
			go func() {
				_, err := p.Execute(tc, task, &stemtype.Envelope{ID: "p", Task: task.Name}, nil)
				done <- err
			}()
			var pid int
			select {
			case pid = <-sig.entered:
			case <-time.After(internalWait):
				t.Fatal("the child's progress never reached the worker")
			}
			tt.end(t, pid, cancel)
			select {
			case err := <-done:
				close(sig.release)
				t.Fatalf("Execute returned (%v) while its task's progress checkpoint was still being applied", err)
			case <-waiting:
			case <-time.After(internalWait):
				t.Fatal("the run neither ended nor waited for its checkpoint")
			}
			close(sig.release)
			select {
			case err := <-done:
				if err == nil {
					t.Error("Execute succeeded; want the task failed")
				}
				if !sig.returned.Load() {
					t.Error("Execute returned before the checkpoint did")
				}
			case <-time.After(internalWait):
				t.Fatal("Execute did not return once its checkpoint did")
			}
		})
	}
}
