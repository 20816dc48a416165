package stemdrivertest

import (
	"fmt"
	"testing"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// publishPair is a broker and a result backend of one deployment, for the
// stemdriver.PendingPublisher properties.
type publishPair struct {
	b  stemdriver.Broker
	pp stemdriver.PendingPublisher // b, when it is one
	rb stemdriver.ResultBackend
}

// runPendingPublish runs the stemdriver.PendingPublisher properties
// (Capabilities.PendingPublish).
func runPendingPublish(t *testing.T, h Harness) {
	t.Helper()
	open := func(t *testing.T, ns string) publishPair {
		b, rb := h.Broker(t, ns), h.Results(t, ns)
		pp, _ := b.(stemdriver.PendingPublisher)
		return publishPair{b, pp, rb}
	}
	has := func(p publishPair) (bool, string) {
		return p.pp != nil, fmt.Sprintf("%T implements stemdriver.PendingPublisher", p.b)
	}
	runPaired(t, "PendingPublish", h.Capabilities.PendingPublish, open, has, []pairedProperty[publishPair]{
		{"WritesAndPublishes", testPendingPublishWritesAndPublishes},
		{"FinalResultRefused", testPendingPublishFinalRefused},
	})
}

// pending returns the pending result of env.
func pending(env *stemtype.Envelope) *stemtype.TaskResult {
	return &stemtype.TaskResult{ID: env.ID, Task: env.Task, Queue: env.Queue, State: stemtype.StatePending, UpdatedAt: now()}
}

// PublishWithResults, with the broker's own result backend, records the
// results and publishes the envelopes: both read back (the results by Get,
// the envelopes by Claim), and a final state already stored stays final.
func testPendingPublishWritesAndPublishes(t *testing.T, p publishPair) {
	b, pp, rb := p.b, p.pp, p.rb
	ctx := testContext(t)
	envs := envelopes("pp", "q", 3)
	done := pending(envs[2])
	done.State = stemtype.StateSucceeded
	if err := rb.Put(ctx, done); err != nil {
		t.Fatal(err)
	}
	rs := []*stemtype.TaskResult{pending(envs[0]), pending(envs[1]), pending(envs[2])}
	if ok, err := pp.PublishWithResults(ctx, rb, rs, envs); !ok || err != nil {
		t.Fatalf("PublishWithResults = %v, %v; want done", ok, err)
	}
	for i, env := range envs {
		want := stemtype.StatePending
		if i == 2 {
			want = stemtype.StateSucceeded
		}
		if r, err := rb.Get(ctx, env.ID); err != nil || r.State != want {
			t.Fatalf("result of %s after PublishWithResults: %+v %v, want %s", env.ID, r, err, want)
		}
	}
	ds := claimN(ctx, t, b, 3, req("c", longLease, "q"))
	var got []string
	for _, d := range ds {
		got = append(got, d.Envelope.ID)
	}
	assertEqual(t, "claimed", got, []string{envs[0].ID, envs[1].ID, envs[2].ID})
}

// A final result among the results makes PublishWithResults decline,
// doing nothing: the caller then writes and publishes itself.
func testPendingPublishFinalRefused(t *testing.T, p publishPair) {
	b, pp, rb := p.b, p.pp, p.rb
	ctx := testContext(t)
	envs := envelopes("pf", "q", 2)
	final := pending(envs[1])
	final.State = stemtype.StateSucceeded
	if ok, err := pp.PublishWithResults(ctx, rb, []*stemtype.TaskResult{pending(envs[0]), final}, envs); ok || err != nil {
		t.Fatalf("PublishWithResults with a final result = %v, %v; want declined", ok, err)
	}
	if r, err := rb.Get(ctx, envs[0].ID); err == nil {
		t.Fatalf("result of %s written by a declined PublishWithResults: %+v", envs[0].ID, r)
	}
	mustClaimNone(ctx, t, b, req("c", shortLease, "q"), 2*shortLease)
}
