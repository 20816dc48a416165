package stemredis

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

func TestResultRetention(t *testing.T) {
	rdb := rawClient(t)
	for _, tc := range []struct {
		query string
		want  time.Duration // -1: no expiry
	}{
		{"", DefaultResultTTL},
		{"result_ttl=90m", 90 * time.Minute},
		{"result_ttl=0", -1},
	} {
		ns := newNS(t)
		r := openTestResults(t, ns, tc.query)
		ctx := testCtx(t)
		if err := r.Put(ctx, &stemtype.TaskResult{ID: "t1", Task: "x", State: stemtype.StateSucceeded, UpdatedAt: time.Now()}); err != nil {
			t.Fatalf("%q: Put: %v", tc.query, err)
		}
		ttl, err := rdb.PTTL(ctx, resultKey(ns, "t1")).Result()
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case tc.want < 0 && ttl != -1:
			t.Errorf("%q: key TTL %v, want none", tc.query, ttl)
		case tc.want > 0 && (ttl <= 0 || ttl > tc.want):
			t.Errorf("%q: key TTL %v, want at most %v and positive", tc.query, ttl, tc.want)
		}
	}
}

func TestResultBatchIsOnePipelinePerChunk(t *testing.T) {
	ns := newNS(t)
	r := openTestResults(t, ns, "")
	ctx := testCtx(t)
	counter := &roundTrips{}
	r.rdb.AddHook(counter)
	// Warm up: dialing a connection sends its own handshake commands.
	warm := []*stemtype.TaskResult{{ID: "w1", Task: "x", State: stemtype.StateStarted}, {ID: "w2", Task: "x", State: stemtype.StateStarted}}
	if err := r.Put(ctx, warm...); err != nil {
		t.Fatalf("Put: %v", err)
	}
	counter.take()
	const n = 2500
	batch := make([]*stemtype.TaskResult, n)
	for i := range batch {
		batch[i] = &stemtype.TaskResult{ID: fmt.Sprintf("r%d", i), Task: "x", State: stemtype.StateSucceeded, UpdatedAt: time.Now()}
	}
	if err := r.Put(ctx, batch...); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if got := counter.n.Load(); got != 3 {
		t.Errorf("Put of %d results took %d round trips, want 3 (chunks of %d)", n, got, resultChunk)
	}
	got, err := r.Get(ctx, "r2499")
	if err != nil || got.ID != "r2499" {
		t.Fatalf("Get: %v, %v", got, err)
	}
	if _, err := r.Get(ctx, "missing"); !errors.Is(err, stemdriver.ErrNotFound) {
		t.Fatalf("Get of a missing result = %v, want ErrNotFound", err)
	}
}
