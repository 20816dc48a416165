package stemredis

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// TestPublishWithResults: on one server and database, the pending states
// and the messages are written together, the states with the results'
// retention TTL; a result backend elsewhere (another database) or a final
// state is refused without writing anything.
func TestPublishWithResults(t *testing.T) {
	ns := newNS(t)
	ctx := testCtx(t)
	b, r := openTestBroker(t, ns), openTestResults(t, ns, "")
	now := time.Now().UTC()
	var envs []*stemtype.Envelope
	var pend []*stemtype.TaskResult
	for i := range 3 {
		env := &stemtype.Envelope{ID: fmt.Sprintf("task-%d", i), Task: "t", Queue: "q", Args: []byte(`{}`), CreatedAt: now}
		if i == 2 {
			env.NotBefore = now.Add(time.Hour)
		}
		envs = append(envs, env)
		pend = append(pend, &stemtype.TaskResult{ID: env.ID, Task: "t", Queue: "q", State: stemtype.StatePending, NotBefore: env.NotBefore, UpdatedAt: now})
	}
	done, err := b.PublishWithResults(ctx, r, pend, envs)
	if !done || err != nil {
		t.Fatalf("PublishWithResults = %v, %v; want true, nil", done, err)
	}
	for _, p := range pend {
		got, err := r.Get(ctx, p.ID)
		if err != nil || got.State != stemtype.StatePending {
			t.Fatalf("Get(%s) = %+v, %v; want pending", p.ID, got, err)
		}
		if ttl := rawClient(t).PTTL(ctx, stateKey(ns, p.ID)).Val(); ttl <= 0 {
			t.Errorf("state key of %s has TTL %v, want the retention TTL", p.ID, ttl)
		}
	}
	ds, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 10, Lease: time.Minute})
	if err != nil || len(ds) != 2 || ds[0].Envelope.ID != "task-0" || ds[1].Envelope.ID != "task-1" {
		t.Fatalf("Claim = %d deliveries, %v; want task-0 and task-1", len(ds), err)
	}
	if n, err := b.Depth(ctx, "q"); err != nil || n != 1 {
		t.Errorf("Depth = %d, %v; want 1 (the delayed task)", n, err)
	}

	// A final state is not what this writes.
	final := &stemtype.TaskResult{ID: "final", Task: "t", Queue: "q", State: stemtype.StateSucceeded, UpdatedAt: now}
	env := &stemtype.Envelope{ID: "final", Task: "t", Queue: "q2", CreatedAt: now}
	if done, err := b.PublishWithResults(ctx, r, []*stemtype.TaskResult{final}, []*stemtype.Envelope{env}); done || err != nil {
		t.Errorf("PublishWithResults of a final state = %v, %v; want false, nil", done, err)
	}
	// Another database of the same server is another store.
	elsewhere, err := OpenResults(ctx, otherDB(t), stemdriver.Options{Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = elsewhere.Close() })
	if done, err := b.PublishWithResults(ctx, elsewhere, pend[:1], []*stemtype.Envelope{env}); done || err != nil {
		t.Errorf("PublishWithResults to another database = %v, %v; want false, nil", done, err)
	}
	if n, err := b.Depth(ctx, "q2"); err != nil || n != 0 {
		t.Errorf("Depth of q2 = %d, %v; want 0: a refused call publishes nothing", n, err)
	}
}

// otherDB returns the test server's URL with another database number.
func otherDB(t *testing.T) string {
	u, err := url.Parse(testutil.RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	db, _ := strconv.Atoi(strings.TrimPrefix(u.Path, "/"))
	u.Path = "/" + strconv.Itoa((db+1)%16)
	return u.String()
}
