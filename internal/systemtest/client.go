package systemtest

import (
	"context"
	"errors"
	"testing"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// partialPublish stores the first envelope of each Publish and then fails,
// as a broker that lost its connection mid-batch.
type partialPublish struct {
	stemdriver.Broker
	fail bool
}

var errPublish = errors.New("broker connection reset")

func (b *partialPublish) Publish(ctx context.Context, envs ...*stemtype.Envelope) error {
	if !b.fail {
		return b.Broker.Publish(ctx, envs...)
	}
	if err := b.Broker.Publish(ctx, envs[:1]...); err != nil {
		return err
	}
	return errPublish
}

// EnqueueBatch after a partial publish returns the ids it assigned, with
// an *EnqueueError saying it cannot tell which were published; a retry
// with the same ids completes the batch, and every task ends succeeded
// under its first id.
func testEnqueueBatchPartialPublishReturnsIDs(t *testing.T, h Harness) {
	d := open(t, h)
	stem.Register(d.reg, "job", func(tc *stem.TaskContext, a stem.Args) (any, error) {
		return tc.TaskID(), nil
	}, stem.TaskOptions{})
	b := &partialPublish{Broker: d.roles.Broker, fail: true}
	client, err := stem.NewClient(stem.ClientConfig{Broker: b, Results: d.roles.Results, Registry: d.reg, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	reqs := []stem.EnqueueRequest{{Task: "job"}, {Task: "job"}, {Task: "job"}}
	ctx := context.Background()
	ids, err := client.EnqueueBatch(ctx, reqs)
	var ee *stem.EnqueueError
	if !errors.As(err, &ee) || !errors.Is(err, errPublish) {
		t.Fatalf("EnqueueBatch error = %v, want an *EnqueueError wrapping the broker's", err)
	}
	if len(ids) != 3 || len(ee.IDs) != 3 || ee.Published != nil {
		t.Fatalf("ids %v, error ids %v published %v; want 3 ids and published unknown", ids, ee.IDs, ee.Published)
	}
	for i, id := range ids {
		if id == "" || ee.IDs[i] != id {
			t.Fatalf("ids %v differ from the error's %v", ids, ee.IDs)
		}
	}
	// The id of a single Enqueue is in its error too.
	if _, err := client.Enqueue(ctx, "job", nil, stem.EnqueueOptions{}); !errors.As(err, &ee) || len(ee.IDs) != 1 || ee.IDs[0] == "" {
		t.Fatalf("Enqueue error = %v, want an *EnqueueError with the id", err)
	}
	if n := d.depth(stemtype.DefaultQueue); n != 2 {
		t.Fatalf("depth %d, want the first task of each call stored", n)
	}

	b.fail = false
	for i := range reqs {
		reqs[i].Options.ID = ids[i]
	}
	again, err := client.EnqueueBatch(ctx, reqs)
	if err != nil {
		t.Fatalf("retry with the same ids: %v", err)
	}
	d.startWorker(stem.WorkerConfig{})
	for i, id := range ids {
		if again[i] != id {
			t.Fatalf("retry assigned %v, want %v", again, ids)
		}
		if r := d.wait(id); r.State != stemtype.StateSucceeded || string(r.Result) != `"`+id+`"` {
			t.Fatalf("task %s: %+v", id, r)
		}
	}
}

// failingPending fails every Put: the pending states cannot be recorded.
type failingPending struct{ stemdriver.ResultBackend }

func (failingPending) Put(context.Context, ...*stemtype.TaskResult) error {
	return errors.New("result backend unreachable")
}

// When the pending states cannot be recorded nothing is published, and
// the error says so for each id.
func testEnqueueBatchPendingFailurePublishesNothing(t *testing.T, h Harness) {
	d := open(t, h)
	client, err := stem.NewClient(stem.ClientConfig{Broker: d.roles.Broker, Results: failingPending{d.roles.Results},
		Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	ids, err := client.EnqueueBatch(context.Background(), []stem.EnqueueRequest{{Task: "a"}, {Task: "b"}})
	var ee *stem.EnqueueError
	if !errors.As(err, &ee) || len(ids) != 2 || len(ee.Published) != 2 || ee.Published[0] || ee.Published[1] {
		t.Fatalf("ids %v, error %v; want 2 ids, none published", ids, err)
	}
	if n := d.depth(stemtype.DefaultQueue); n != 0 {
		t.Fatalf("depth %d, want nothing published", n)
	}
}
