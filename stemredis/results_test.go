package stemredis

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
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

// TestResultStateIsTheFirstStateKey pins what resultPutScript's string
// search relies on: only string values precede the state field in the JSON
// of a TaskResult, so the first "state":" of a stored result is its state,
// whatever its id, task, queue, result, error, progress or meta hold.
func TestResultStateIsTheFirstStateKey(t *testing.T) {
	typ := reflect.TypeFor[stemtype.TaskResult]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		if f.Name == "State" {
			break
		}
		if f.Type.Kind() != reflect.String {
			t.Fatalf("TaskResult field %s (%s) precedes State: the result scripts' state search needs only strings before it", f.Name, f.Type)
		}
	}
	trap := `x","state":"succeeded","y":"`
	res := &stemtype.TaskResult{ID: trap, Task: trap, Queue: trap, State: stemtype.StateStarted,
		Result: json.RawMessage(`{"state":"succeeded"}`), Meta: map[string]string{`a"state`: "succeeded"}}
	raw, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	if i := bytes.Index(raw, []byte(`"state":"`)); i < 0 || !bytes.HasPrefix(raw[i:], []byte(`"state":"started"`)) {
		t.Fatalf("first \"state\":\" of %s is not the state field", raw)
	}
}

// TestResultFinalStateFoundWherever runs the script on stored results
// whose state lies beyond the part it reads first (a long id) and whose
// other fields mention final states: only the state field decides.
func TestResultFinalStateFoundWherever(t *testing.T) {
	ns := newNS(t)
	r := openTestResults(t, ns, "")
	ctx := testCtx(t)
	long := strings.Repeat("i", 3000)
	trap := `x","state":"succeeded","y":"`
	cases := []struct {
		name  string
		res   *stemtype.TaskResult
		final bool
	}{
		{"long id, succeeded", &stemtype.TaskResult{ID: "a" + long, Task: "t", State: stemtype.StateSucceeded}, true},
		{"long id, started", &stemtype.TaskResult{ID: "b" + long, Task: "t", State: stemtype.StateStarted}, false},
		{"state cut at the edge", &stemtype.TaskResult{ID: "c" + strings.Repeat("i", 989), Task: "t", State: stemtype.StateCancelled}, true},
		{"traps, started", &stemtype.TaskResult{ID: "d" + trap, Task: trap, Queue: trap, State: stemtype.StateStarted,
			Result: json.RawMessage(`{"state":"succeeded"}`), Meta: map[string]string{`a"state`: "failed"}}, false},
		{"big result, failed", &stemtype.TaskResult{ID: "e", Task: "t", State: stemtype.StateFailed,
			Result: json.RawMessage(`"` + strings.Repeat("r", 1<<20) + `"`)}, true},
	}
	for _, tc := range cases {
		if err := r.Put(ctx, tc.res); err != nil {
			t.Fatalf("%s: Put: %v", tc.name, err)
		}
		later := &stemtype.TaskResult{ID: tc.res.ID, Task: "t", State: stemtype.StatePending}
		if err := r.Put(ctx, later); err != nil {
			t.Fatalf("%s: second Put: %v", tc.name, err)
		}
		got, err := r.Get(ctx, tc.res.ID)
		if err != nil {
			t.Fatalf("%s: Get: %v", tc.name, err)
		}
		if want := map[bool]stemtype.State{true: tc.res.State, false: stemtype.StatePending}[tc.final]; got.State != want {
			t.Errorf("%s: state after a pending write %s, want %s", tc.name, got.State, want)
		}
	}
}

// TestResultSkippedWriteKeepsTTL: a write over a final state changes
// nothing, not even the retention TTL; a write that is applied restarts it.
func TestResultSkippedWriteKeepsTTL(t *testing.T) {
	rdb := rawClient(t)
	ns := newNS(t)
	r := openTestResults(t, ns, "result_ttl=90m")
	ctx := testCtx(t)
	for _, st := range []stemtype.State{stemtype.StateStarted, stemtype.StateSucceeded} {
		id := "t-" + string(st)
		if err := r.Put(ctx, &stemtype.TaskResult{ID: id, Task: "x", State: st}); err != nil {
			t.Fatal(err)
		}
		if err := rdb.PExpire(ctx, resultKey(ns, id), 10*time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		if err := r.Put(ctx, &stemtype.TaskResult{ID: id, Task: "x", State: stemtype.StateStarted}); err != nil {
			t.Fatal(err)
		}
		ttl, err := rdb.PTTL(ctx, resultKey(ns, id)).Result()
		if err != nil {
			t.Fatal(err)
		}
		if restarted := ttl > 10*time.Minute; restarted != !st.Final() {
			t.Errorf("after a write over %s the TTL is %v (restarted: %v, want %v)", st, ttl, restarted, !st.Final())
		}
	}
}
