package stemredis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// TestResultRetention checks the TTL of both keys of a task: the state key
// a result that is not final goes to, and the result key of its final
// state.
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
		if err := r.Put(ctx,
			&stemtype.TaskResult{ID: "t1", Task: "x", State: stemtype.StateSucceeded, UpdatedAt: time.Now()},
			&stemtype.TaskResult{ID: "t2", Task: "x", State: stemtype.StateStarted, UpdatedAt: time.Now()}); err != nil {
			t.Fatalf("%q: Put: %v", tc.query, err)
		}
		for _, key := range []string{resultKey(ns, "t1"), stateKey(ns, "t2")} {
			ttl, err := rdb.PTTL(ctx, key).Result()
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.want < 0 && ttl != -1:
				t.Errorf("%q: %s TTL %v, want none", tc.query, key, ttl)
			case tc.want > 0 && (ttl <= 0 || ttl > tc.want):
				t.Errorf("%q: %s TTL %v, want at most %v and positive", tc.query, key, ttl, tc.want)
			}
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

// TestResultPutRunsNoScript: Put writes with native commands only, in
// one pipeline (a script run costs several times a SET's Redis CPU), for
// every kind of write: states that are not final, a final one, a late
// write after it and a second final in the same call.
func TestResultPutRunsNoScript(t *testing.T) {
	ns := newNS(t)
	r := openTestResults(t, ns, "")
	ctx := testCtx(t)
	rec := &commandNames{}
	r.rdb.AddHook(rec)
	at := time.Now()
	batch := []*stemtype.TaskResult{
		{ID: "a", Task: "x", State: stemtype.StatePending, UpdatedAt: at},
		{ID: "a", Task: "x", State: stemtype.StateStarted, UpdatedAt: at},
		{ID: "a", Task: "x", State: stemtype.StateStarted, Progress: &stemtype.Progress{Percent: 50, At: at}, UpdatedAt: at},
		{ID: "a", Task: "x", State: stemtype.StateSucceeded, UpdatedAt: at},
		{ID: "a", Task: "x", State: stemtype.StateStarted, UpdatedAt: at},
		{ID: "a", Task: "x", State: stemtype.StateFailed, UpdatedAt: at},
		{ID: "b", Task: "x", State: stemtype.StateRetry, UpdatedAt: at},
	}
	if err := r.Put(ctx, batch...); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if err := r.Put(ctx, &stemtype.TaskResult{ID: "c", Task: "x", State: stemtype.StateCancelled, UpdatedAt: at}); err != nil {
		t.Fatalf("Put: %v", err)
	}
	for _, name := range rec.take() {
		if name != "set" && name != "del" && name != "hello" && name != "client" && name != "select" && name != "ping" {
			t.Errorf("Put sent %q; want only SET and DEL", name)
		}
	}
	// A final write over a final state stored by another call is checked
	// by finalOverLegacyScript (in case the record is of an older version):
	// it changes nothing either.
	if err := r.Put(ctx, &stemtype.TaskResult{ID: "a", Task: "x", State: stemtype.StateCancelled, UpdatedAt: at}); err != nil {
		t.Fatalf("Put: %v", err)
	}
	got, err := r.Get(ctx, "a")
	if err != nil || got.State != stemtype.StateSucceeded {
		t.Fatalf("Get(a) = (%+v, %v), want succeeded", got, err)
	}
}

// commandNames is a go-redis hook that records the names of the commands
// sent, alone or in pipelines.
type commandNames struct {
	mu    sync.Mutex
	names []string
}

func (c *commandNames) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *commandNames) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.add(cmd)
		return next(ctx, cmd)
	}
}

func (c *commandNames) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.add(cmds...)
		return next(ctx, cmds)
	}
}

func (c *commandNames) add(cmds ...redis.Cmder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cmd := range cmds {
		c.names = append(c.names, strings.ToLower(cmd.Name()))
	}
}

// take returns the names recorded and forgets them.
func (c *commandNames) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.names
	c.names = nil
	return out
}

// TestResultKeysOfAFinishedTask: a task that ran to its end holds one key,
// its final record at the result key; a late write that is not final
// recreates the state key, and Get still returns the final record.
func TestResultKeysOfAFinishedTask(t *testing.T) {
	rdb := rawClient(t)
	ns := newNS(t)
	r := openTestResults(t, ns, "")
	ctx := testCtx(t)
	at := time.Now()
	for _, st := range []stemtype.State{stemtype.StatePending, stemtype.StateStarted, stemtype.StateRetry, stemtype.StateStarted} {
		if err := r.Put(ctx, &stemtype.TaskResult{ID: "t1", Task: "x", State: st, UpdatedAt: at}); err != nil {
			t.Fatal(err)
		}
	}
	if keys := nsKeys(t, rdb, ns); !slices.Equal(keys, []string{stateKey(ns, "t1")}) {
		t.Fatalf("keys of a started task: %q, want only its state key", keys)
	}
	final := &stemtype.TaskResult{ID: "t1", Task: "x", State: stemtype.StateSucceeded, Result: json.RawMessage(`42`), UpdatedAt: at}
	if err := r.Put(ctx, final); err != nil {
		t.Fatal(err)
	}
	if keys := nsKeys(t, rdb, ns); !slices.Equal(keys, []string{resultKey(ns, "t1")}) {
		t.Fatalf("keys of a finished task: %q, want only its result key", keys)
	}
	late := &stemtype.TaskResult{ID: "t1", Task: "x", State: stemtype.StateStarted,
		Progress: &stemtype.Progress{Percent: 99, At: at}, UpdatedAt: at}
	if err := r.Put(ctx, late); err != nil {
		t.Fatal(err)
	}
	if keys := nsKeys(t, rdb, ns); !slices.Equal(keys, []string{resultKey(ns, "t1"), stateKey(ns, "t1")}) {
		t.Fatalf("keys after a late progress write: %q, want the result key and the state key", keys)
	}
	if ttl, err := rdb.PTTL(ctx, stateKey(ns, "t1")).Result(); err != nil || ttl <= 0 {
		t.Fatalf("the late state key's TTL = (%v, %v), want positive", ttl, err)
	}
	got, err := r.Get(ctx, "t1")
	if err != nil || got.State != stemtype.StateSucceeded || string(got.Result) != "42" {
		t.Fatalf("Get after a late progress write = (%+v, %v), want the succeeded result", got, err)
	}
	many, err := r.GetMany(ctx, "t1", "none")
	if err != nil || len(many) != 2 || many[0] == nil || many[0].State != stemtype.StateSucceeded || many[1] != nil {
		t.Fatalf("GetMany after a late progress write = (%+v, %v), want [succeeded, nil]", many, err)
	}
}

// nsKeys returns the sorted keys of namespace ns's results.
func nsKeys(t *testing.T, rdb *redis.Client, ns string) []string {
	t.Helper()
	keys, err := rdb.Keys(context.Background(), "stem:"+globEscape(escape(ns))+":*").Result()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	return keys
}

// TestResultRecordsOfOlderVersions: versions before the two-key layout
// wrote every state to the result key. Such a record that is not final
// neither hides a newer state record nor blocks the final state, by Put or
// by PutIfState; a final one stays final.
func TestResultRecordsOfOlderVersions(t *testing.T) {
	rdb := rawClient(t)
	ns := newNS(t)
	r := openTestResults(t, ns, "")
	ctx := testCtx(t)
	at := time.Now()
	plant := func(id string, st stemtype.State) {
		t.Helper()
		raw, err := json.Marshal(&stemtype.TaskResult{ID: id, Task: "x", State: st, UpdatedAt: at})
		if err != nil {
			t.Fatal(err)
		}
		if err := rdb.Set(ctx, resultKey(ns, id), raw, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
	}
	state := func(id string) stemtype.State {
		t.Helper()
		got, err := r.Get(ctx, id)
		if err != nil {
			t.Fatalf("Get(%s): %v", id, err)
		}
		many, err := r.GetMany(ctx, id)
		if err != nil || many[0] == nil || many[0].State != got.State {
			t.Fatalf("GetMany(%s) = (%+v, %v), want state %s as Get", id, many, err, got.State)
		}
		return got.State
	}
	put := func(rs ...*stemtype.TaskResult) {
		t.Helper()
		if err := r.Put(ctx, rs...); err != nil {
			t.Fatal(err)
		}
	}
	res := func(id string, st stemtype.State) *stemtype.TaskResult {
		return &stemtype.TaskResult{ID: id, Task: "x", State: st, UpdatedAt: at}
	}

	plant("a", stemtype.StatePending)
	if st := state("a"); st != stemtype.StatePending {
		t.Fatalf("old pending record reads as %s", st)
	}
	put(res("a", stemtype.StateStarted))
	if st := state("a"); st != stemtype.StateStarted {
		t.Fatalf("after started over an old pending: %s, want started", st)
	}
	put(res("a", stemtype.StateFailed), res("a", stemtype.StateSucceeded), res("a", stemtype.StateStarted))
	if st := state("a"); st != stemtype.StateFailed {
		t.Fatalf("after failed, succeeded, started over an old pending: %s, want failed (the first final)", st)
	}
	put(res("a", stemtype.StateCancelled))
	if st := state("a"); st != stemtype.StateFailed {
		t.Fatalf("after a later cancelled: %s, want failed", st)
	}

	plant("b", stemtype.StatePending)
	if ok, err := r.PutIfState(ctx, res("b", stemtype.StateCancelled), stemtype.StatePending); err != nil || !ok {
		t.Fatalf("PutIfState(cancelled) over an old pending = (%v, %v), want (true, nil)", ok, err)
	}
	if st := state("b"); st != stemtype.StateCancelled {
		t.Fatalf("after PutIfState(cancelled) over an old pending: %s", st)
	}
	if keys := nsKeys(t, rdb, ns); slices.Contains(keys, stateKey(ns, "b")) {
		t.Fatalf("keys %q hold b's state key after its final state", keys)
	}

	plant("c", stemtype.StateSucceeded)
	put(res("c", stemtype.StateFailed), res("c", stemtype.StateStarted))
	if ok, err := r.PutIfState(ctx, res("c", stemtype.StateCancelled), stemtype.StatePending, stemtype.StateSucceeded); err != nil || ok {
		t.Fatalf("PutIfState over an old succeeded = (%v, %v), want (false, nil)", ok, err)
	}
	if st := state("c"); st != stemtype.StateSucceeded {
		t.Fatalf("old succeeded record after later writes: %s", st)
	}
}

// TestResultPutIfStateWritesTheRightKey: a conditional write that is not
// final goes to the state key, a final one to the result key, deleting the
// state key.
func TestResultPutIfStateWritesTheRightKey(t *testing.T) {
	rdb := rawClient(t)
	ns := newNS(t)
	r := openTestResults(t, ns, "")
	ctx := testCtx(t)
	at := time.Now()
	if err := r.Put(ctx, &stemtype.TaskResult{ID: "t1", Task: "x", State: stemtype.StatePending, UpdatedAt: at}); err != nil {
		t.Fatal(err)
	}
	if ok, err := r.PutIfState(ctx, &stemtype.TaskResult{ID: "t1", Task: "x", State: stemtype.StateRetry, UpdatedAt: at}, stemtype.StatePending); err != nil || !ok {
		t.Fatalf("PutIfState(retry) over pending = (%v, %v), want (true, nil)", ok, err)
	}
	if keys := nsKeys(t, rdb, ns); !slices.Equal(keys, []string{stateKey(ns, "t1")}) {
		t.Fatalf("keys after a conditional retry: %q, want only the state key", keys)
	}
	if ok, err := r.PutIfState(ctx, &stemtype.TaskResult{ID: "t1", Task: "x", State: stemtype.StateCancelled, UpdatedAt: at}, stemtype.StateRetry); err != nil || !ok {
		t.Fatalf("PutIfState(cancelled) over retry = (%v, %v), want (true, nil)", ok, err)
	}
	if keys := nsKeys(t, rdb, ns); !slices.Equal(keys, []string{resultKey(ns, "t1")}) {
		t.Fatalf("keys after a conditional cancel: %q, want only the result key", keys)
	}
	if ttl, err := rdb.PTTL(ctx, resultKey(ns, "t1")).Result(); err != nil || ttl <= 0 || ttl > DefaultResultTTL {
		t.Fatalf("the cancelled result's TTL = (%v, %v), want positive, at most %v", ttl, err, DefaultResultTTL)
	}
}

// TestResultSkippedWriteKeepsTTL: a final write over a final state
// changes nothing, not even the retention TTL, nor does a later write that
// is not final (it goes to the state key); a write that is applied starts
// its key's TTL afresh.
func TestResultSkippedWriteKeepsTTL(t *testing.T) {
	rdb := rawClient(t)
	ns := newNS(t)
	r := openTestResults(t, ns, "result_ttl=90m")
	ctx := testCtx(t)
	pttl := func(key string) time.Duration {
		t.Helper()
		ttl, err := rdb.PTTL(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return ttl
	}
	put := func(st stemtype.State) {
		t.Helper()
		if err := r.Put(ctx, &stemtype.TaskResult{ID: "t1", Task: "x", State: st}); err != nil {
			t.Fatal(err)
		}
	}
	put(stemtype.StateStarted)
	if err := rdb.PExpire(ctx, stateKey(ns, "t1"), 10*time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	put(stemtype.StateStarted)
	if ttl := pttl(stateKey(ns, "t1")); ttl <= 10*time.Minute {
		t.Errorf("after a second started write the state key's TTL is %v, want it restarted (over 10m)", ttl)
	}
	put(stemtype.StateSucceeded)
	if err := rdb.PExpire(ctx, resultKey(ns, "t1"), 10*time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	put(stemtype.StateFailed)
	put(stemtype.StateStarted)
	if ttl := pttl(resultKey(ns, "t1")); ttl <= 0 || ttl > 10*time.Minute {
		t.Errorf("after writes over succeeded the result key's TTL is %v, want it kept (at most 10m)", ttl)
	}
}

// TestResultGetFinalMany: GetFinalMany returns final results only, in
// order, whatever else is stored for an id.
func TestResultGetFinalMany(t *testing.T) {
	rdb := rawClient(t)
	ns := newNS(t)
	r := openTestResults(t, ns, "")
	ctx := testCtx(t)
	at := time.Now()
	res := func(id string, st stemtype.State) *stemtype.TaskResult {
		return &stemtype.TaskResult{ID: id, Task: "x", State: st, UpdatedAt: at}
	}
	if err := r.Put(ctx, res("pending", stemtype.StatePending), res("done", stemtype.StateFailed),
		res("late", stemtype.StateSucceeded), res("late", stemtype.StateStarted)); err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(res("old", stemtype.StateStarted))
	if err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, resultKey(ns, "old"), raw, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	got, err := r.GetFinalMany(ctx, "none", "pending", "done", "late", "old")
	if err != nil {
		t.Fatalf("GetFinalMany: %v", err)
	}
	want := []stemtype.State{"", "", stemtype.StateFailed, stemtype.StateSucceeded, ""}
	if len(got) != len(want) {
		t.Fatalf("GetFinalMany returned %d results, want %d", len(got), len(want))
	}
	for i, g := range got {
		var st stemtype.State
		if g != nil {
			st = g.State
		}
		if st != want[i] {
			t.Errorf("result %d: state %q, want %q", i, st, want[i])
		}
	}
	if got, err := r.GetFinalMany(ctx); err != nil || len(got) != 0 {
		t.Fatalf("GetFinalMany() = (%v, %v), want empty", got, err)
	}
}
