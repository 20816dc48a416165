package stemdrivertest

import (
	"errors"
	"testing"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// runPutPublish checks Capabilities.PutPublish against the broker's type,
// and runs the stemdriver.ResultPublisher properties when it is declared,
// under a subtest named PutPublish.
func runPutPublish(t *testing.T, h Harness) {
	t.Helper()
	t.Run("PutPublish", func(t *testing.T) {
		ns := newNamespace(t)
		b, rb := h.Broker(t, ns), h.Results(t, ns)
		rp, ok := b.(stemdriver.ResultPublisher)
		pubs := ok && rp.PublishesWith(rb)
		switch {
		case h.Capabilities.PutPublish && !pubs:
			t.Fatalf("Capabilities.PutPublish is declared but %T does not implement stemdriver.ResultPublisher with PublishesWith(%T) true", b, rb)
		case !h.Capabilities.PutPublish && pubs:
			t.Fatalf("%T implements stemdriver.ResultPublisher and PublishesWith(%T) but Capabilities.PutPublish is not declared", b, rb)
		case !pubs:
			t.Skip("the backend does not declare Capabilities.PutPublish")
		}
		for _, p := range []struct {
			name string
			fn   func(t *testing.T, b stemdriver.Broker, rp stemdriver.ResultPublisher, rb stemdriver.ResultBackend)
		}{
			{"WritesAndPublishes", testPutPublishWritesAndPublishes},
			{"NothingOnError", testPutPublishNothingOnError},
		} {
			t.Run(p.name, func(t *testing.T) {
				t.Parallel()
				ns := newNamespace(t)
				b, rb := h.Broker(t, ns), h.Results(t, ns)
				p.fn(t, b, b.(stemdriver.ResultPublisher), rb)
			})
		}
	})
}

// pending returns the pending result of env.
func pending(env *stemtype.Envelope) *stemtype.TaskResult {
	return &stemtype.TaskResult{ID: env.ID, Task: env.Task, Queue: env.Queue, State: stemtype.StatePending, UpdatedAt: now()}
}

// PutPublish records the results and publishes the envelopes: both read
// back (the results by Get, the envelopes by Claim), and a final state
// already stored stays final.
func testPutPublishWritesAndPublishes(t *testing.T, b stemdriver.Broker, rp stemdriver.ResultPublisher, rb stemdriver.ResultBackend) {
	ctx := testContext(t)
	envs := envelopes("pp", "q", 3)
	done := pending(envs[2])
	done.State = stemtype.StateSucceeded
	if err := rb.Put(ctx, done); err != nil {
		t.Fatal(err)
	}
	rs := []*stemtype.TaskResult{pending(envs[0]), pending(envs[1]), pending(envs[2])}
	if err := rp.PutPublish(ctx, rb, rs, envs); err != nil {
		t.Fatalf("PutPublish: %v", err)
	}
	for i, env := range envs {
		want := stemtype.StatePending
		if i == 2 {
			want = stemtype.StateSucceeded
		}
		if r, err := rb.Get(ctx, env.ID); err != nil || r.State != want {
			t.Fatalf("result of %s after PutPublish: %+v %v, want %s", env.ID, r, err, want)
		}
	}
	ds := claimN(ctx, t, b, 3, req("c", longLease, "q"))
	var got []string
	for _, d := range ds {
		got = append(got, d.Envelope.ID)
	}
	assertEqual(t, "claimed", got, []string{envs[0].ID, envs[1].ID, envs[2].ID})
}

// A PutPublish that fails (a result the backend refuses) writes nothing
// and publishes nothing.
func testPutPublishNothingOnError(t *testing.T, b stemdriver.Broker, rp stemdriver.ResultPublisher, rb stemdriver.ResultBackend) {
	ctx := testContext(t)
	envs := envelopes("pn", "q", 2)
	bad := pending(envs[1])
	bad.ID = ""
	if err := rp.PutPublish(ctx, rb, []*stemtype.TaskResult{pending(envs[0]), bad}, envs); err == nil {
		t.Fatal("PutPublish with a result without an id succeeded, want an error")
	}
	if r, err := rb.Get(ctx, envs[0].ID); !errors.Is(err, stemdriver.ErrNotFound) {
		t.Fatalf("result of %s after a failed PutPublish: %+v %v, want none", envs[0].ID, r, err)
	}
	mustClaimNone(ctx, t, b, req("c", shortLease, "q"), 2*shortLease)
}
