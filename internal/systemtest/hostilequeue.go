package systemtest

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemtype"
)

// QueueGarbage are queue messages another program may write where only
// stem writes (a row, a stream entry): not JSON, and JSON that decodes to
// an envelope that is not valid (no id, no task, no queue, a negative
// attempt). RejectedIDs are the ids the valid-looking ones name.
var QueueGarbage = struct {
	Bodies      []string
	RejectedIDs []string
}{
	Bodies: []string{`not json`, `{}`, `{"id":"garbage-1"}`, `{"id":"garbage-2","task":"echo","queue":"default","attempt":-1}`,
		`{"id":"garbage-3","task":"echo","queue":""}`},
	RejectedIDs: []string{"garbage-1", "garbage-2", "garbage-3"},
}

// CheckRawQueueGarbage writes QueueGarbage's bodies to the default queue
// of namespace ns with inject, where only the broker's own code writes,
// and runs a worker over r: each is dead-lettered, never run (a body
// that names an id gets a failed result of kind "decode"), the queue
// empties, the result writer never chokes on a result without an id, and
// a task enqueued after them succeeds.
func CheckRawQueueGarbage(t *testing.T, ns string, r Roles, inject func(body []byte) error) {
	t.Helper()
	for _, b := range QueueGarbage.Bodies {
		if err := inject([]byte(b)); err != nil {
			t.Fatalf("write %q: %v", b, err)
		}
	}
	d := openWith(t, func(*testing.T, string) Roles { return r }, ns)
	ran := make(chan string, 10)
	stem.Register(d.reg, "echo", func(tc *stem.TaskContext, _ stem.Args) (any, error) { ran <- tc.TaskID(); return 1, nil },
		stem.TaskOptions{})
	var logs testutil.SyncBuffer
	d.startWorker(stem.WorkerConfig{ID: "w1", Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	id := d.enqueue("echo", stem.EnqueueOptions{})
	if res := d.wait(id); res.State != stemtype.StateSucceeded {
		t.Fatalf("the task after the garbage: %+v", res)
	}
	d.waitDepth(stemtype.DefaultQueue, 0)
	for _, gid := range QueueGarbage.RejectedIDs {
		d.waitFor("a failed result for "+gid, func(ctx context.Context) bool {
			res, err := d.roles.Results.Get(ctx, gid)
			return err == nil && res.State == stemtype.StateFailed && res.Error != nil && res.Error.Kind == "decode"
		})
	}
	if got := <-ran; got != id || len(ran) != 0 {
		t.Fatalf("ran %s and %d more, want only %s", got, len(ran), id)
	}
	out := logs.String()
	if n := strings.Count(out, "dead-lettering undecodable message"); n != len(QueueGarbage.Bodies) {
		t.Errorf("%d dead-lettered, want %d:\n%s", n, len(QueueGarbage.Bodies), out)
	}
	if strings.Contains(out, "write results failed") {
		t.Errorf("a garbage message choked the result writer:\n%s", out)
	}
}
