package stemdrivertest

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// resultsProperties lists the Results tests: every result backend passes
// them, except those that need a capability caps does not declare.
func resultsProperties(caps Capabilities) []property[stemdriver.ResultBackend] {
	return []property[stemdriver.ResultBackend]{
		{name: "Capabilities", fn: testResultsCapabilitiesDeclared(caps)},
		{name: "PutGetRoundTrip", fn: testResultsPutGetRoundTrip},
		{name: "GetManyInOrderWithGaps", fn: testResultsGetManyInOrderWithGaps},
		{name: "PutIfStateIsConditional", fn: testResultsPutIfStateIsConditional, needs: capConditionalPut},
		{name: "GetFinalManyReturnsFinalOnly", fn: testResultsGetFinalManyReturnsFinalOnly, needs: capFinalGet},
		{name: "MissingIsErrNotFound", fn: testResultsMissingIsErrNotFound},
		{name: "PutReplacesWholeRecord", fn: testResultsPutReplacesWholeRecord},
		{name: "BatchPutAppliesInOrder", fn: testResultsBatchPutAppliesInOrder},
		{name: "FinalStatesAreFinal", fn: func(t *testing.T, open opener[stemdriver.ResultBackend], ns string) {
			testResultsFinalStatesAreFinal(t, open, ns, caps)
		}},
		{name: "FinalStatesHoldInLargeBatches", fn: testResultsFinalStatesHoldInLargeBatches},
		{name: "ConcurrentWritersEndFinal", fn: testResultsConcurrentWritersEndFinal},
		{name: "NamespacesIsolated", fn: testResultsNamespacesIsolated},
		{name: "ClosedReturnsErrClosed", fn: testResultsClosedReturnsErrClosed},
	}
}

// testResultsCapabilitiesDeclared returns the test that fails when caps
// and the types the opener returns disagree, either way.
func testResultsCapabilitiesDeclared(caps Capabilities) func(t *testing.T, open opener[stemdriver.ResultBackend], ns string) {
	return func(t *testing.T, open opener[stemdriver.ResultBackend], ns string) {
		for _, m := range capabilityMismatches(open(t, ns), caps) {
			t.Error(m)
		}
	}
}

// conditionalPutter returns rb as a stemdriver.ConditionalPutter, failing
// t when the backend declared the capability but rb lacks it.
func conditionalPutter(t *testing.T, rb stemdriver.ResultBackend) stemdriver.ConditionalPutter {
	t.Helper()
	cp, ok := rb.(stemdriver.ConditionalPutter)
	if !ok {
		t.Fatalf("Capabilities.ConditionalPut is declared but %T does not implement stemdriver.ConditionalPutter", rb)
	}
	return cp
}

func testResultsPutGetRoundTrip(t *testing.T, open opener[stemdriver.ResultBackend], ns string) {
	ctx := testContext(t)
	rb := open(t, ns)
	res := fullResult("r-1")
	want := cloneResult(t, res)
	if err := rb.Put(ctx, res); err != nil {
		t.Fatalf("Put: %v", err)
	}
	// The stored result is a copy of the caller's.
	res.Meta["revokedBy"] = "changed"
	res.Error.Message = "changed"
	res.Result[1] = 'X'

	got, err := open(t, ns).Get(ctx, "r-1")
	if err != nil {
		t.Fatalf("Get from another connection: %v", err)
	}
	assertEqual(t, "stored result", normResult(got), normResult(want))
	// So is what Get returns.
	got.Meta["revokedBy"] = "changed"
	got.Progress.Percent = 1
	again, err := rb.Get(ctx, "r-1")
	if err != nil {
		t.Fatalf("second Get: %v", err)
	}
	assertEqual(t, "stored result after changing a Get's", normResult(again), normResult(want))
}

func testResultsGetManyInOrderWithGaps(t *testing.T, open opener[stemdriver.ResultBackend], ns string) {
	ctx := testContext(t)
	rb := open(t, ns)
	at := now()
	for _, id := range []string{"m-1", "m-3"} {
		if err := rb.Put(ctx, &stemtype.TaskResult{ID: id, Task: "t", State: stemtype.StateSucceeded, UpdatedAt: at}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := open(t, ns).GetMany(ctx, "m-3", "m-2", "m-1")
	if err != nil {
		t.Fatalf("GetMany: %v", err)
	}
	if len(got) != 3 || got[0] == nil || got[0].ID != "m-3" || got[1] != nil || got[2] == nil || got[2].ID != "m-1" {
		t.Fatalf("GetMany(m-3, m-2, m-1) = %+v, want [m-3, nil, m-1]", got)
	}
	if got, err := rb.GetMany(ctx); err != nil || len(got) != 0 {
		t.Fatalf("GetMany() = (%v, %v), want empty", got, err)
	}
}

func testResultsPutIfStateIsConditional(t *testing.T, open opener[stemdriver.ResultBackend], ns string) {
	ctx := testContext(t)
	rb := open(t, ns)
	cp := conditionalPutter(t, rb)
	at := now()
	cancelled := &stemtype.TaskResult{ID: "r-1", Task: "t", State: stemtype.StateCancelled, UpdatedAt: at}
	if stored, err := cp.PutIfState(ctx, cancelled, stemtype.StatePending); err != nil || stored {
		t.Fatalf("PutIfState of a missing result = (%v, %v), want (false, nil)", stored, err)
	}
	if _, err := rb.Get(ctx, "r-1"); !errors.Is(err, stemdriver.ErrNotFound) {
		t.Fatalf("PutIfState stored a result that was missing: %v", err)
	}
	started := &stemtype.TaskResult{ID: "r-1", Task: "t", State: stemtype.StateStarted, UpdatedAt: at}
	if err := rb.Put(ctx, started); err != nil {
		t.Fatal(err)
	}
	if stored, err := cp.PutIfState(ctx, cancelled, stemtype.StatePending, stemtype.StateRetry); err != nil || stored {
		t.Fatalf("PutIfState over a started result = (%v, %v), want (false, nil)", stored, err)
	}
	if got, _ := open(t, ns).Get(ctx, "r-1"); got == nil || got.State != stemtype.StateStarted {
		t.Fatalf("a started result was replaced: %+v", got)
	}
	pending := &stemtype.TaskResult{ID: "r-1", Task: "t", State: stemtype.StatePending, UpdatedAt: at}
	if err := rb.Put(ctx, pending); err != nil {
		t.Fatal(err)
	}
	if stored, err := cp.PutIfState(ctx, cancelled, stemtype.StatePending, stemtype.StateRetry); err != nil || !stored {
		t.Fatalf("PutIfState over a pending result = (%v, %v), want (true, nil)", stored, err)
	}
	if got, _ := open(t, ns).Get(ctx, "r-1"); got == nil || got.State != stemtype.StateCancelled {
		t.Fatalf("after PutIfState: %+v, want cancelled", got)
	}
}

// testResultsGetFinalManyReturnsFinalOnly: GetFinalMany returns, in input
// order, the stored result of each id whose state is final, nil for the
// others, whatever was written over a final state since.
func testResultsGetFinalManyReturnsFinalOnly(t *testing.T, open opener[stemdriver.ResultBackend], ns string) {
	ctx := testContext(t)
	rb := open(t, ns)
	at := now()
	res := func(id string, st stemtype.State) *stemtype.TaskResult {
		return &stemtype.TaskResult{ID: id, Task: "t", State: st, Attempt: 1, WorkerID: "w-" + id, UpdatedAt: at}
	}
	stored := map[string]*stemtype.TaskResult{}
	var batch []*stemtype.TaskResult
	for _, st := range []stemtype.State{stemtype.StatePending, stemtype.StateStarted, stemtype.StateRetry,
		stemtype.StateSucceeded, stemtype.StateFailed, stemtype.StateCancelled} {
		r := res(string(st), st)
		stored[r.ID] = r
		batch = append(batch, r)
	}
	// A started written over a final state (a redelivery) is skipped: the
	// final state is still what GetFinalMany returns.
	late := res("late", stemtype.StateSucceeded)
	stored[late.ID] = late
	batch = append(batch, late, res("late", stemtype.StateStarted))
	if err := rb.Put(ctx, batch...); err != nil {
		t.Fatalf("Put: %v", err)
	}

	fg, ok := open(t, ns).(stemdriver.FinalGetter)
	if !ok {
		t.Fatalf("Capabilities.FinalGet is declared but %T does not implement stemdriver.FinalGetter", rb)
	}
	ids := []string{"missing", "cancelled", "pending", "succeeded", "started", "late", "retry", "failed", "succeeded"}
	got, err := fg.GetFinalMany(ctx, ids...)
	if err != nil {
		t.Fatalf("GetFinalMany: %v", err)
	}
	if len(got) != len(ids) {
		t.Fatalf("GetFinalMany of %d ids returned %d results", len(ids), len(got))
	}
	for i, id := range ids {
		var want *stemtype.TaskResult
		if r := stored[id]; r != nil && r.State.Final() {
			want = r
		}
		assertEqual(t, fmt.Sprintf("GetFinalMany result %d (%s)", i, id), normResult(got[i]), normResult(want))
	}
	if got, err := fg.GetFinalMany(ctx); err != nil || len(got) != 0 {
		t.Fatalf("GetFinalMany() = (%v, %v), want empty", got, err)
	}
}

func testResultsMissingIsErrNotFound(t *testing.T, open opener[stemdriver.ResultBackend], ns string) {
	ctx := testContext(t)
	got, err := open(t, ns).Get(ctx, "missing")
	if !errors.Is(err, stemdriver.ErrNotFound) {
		t.Fatalf("Get of a missing id = (%v, %v), want an error matching ErrNotFound", got, err)
	}
}

func testResultsPutReplacesWholeRecord(t *testing.T, open opener[stemdriver.ResultBackend], ns string) {
	ctx := testContext(t)
	rb := open(t, ns)
	first := fullResult("r-1")
	first.State = stemtype.StateStarted // not final, so it may be replaced
	if err := rb.Put(ctx, first); err != nil {
		t.Fatalf("first Put: %v", err)
	}
	second := &stemtype.TaskResult{
		ID: "r-1", Task: "stemdrivertest.full", State: stemtype.StateRetry, Attempt: 3,
		UpdatedAt: now(),
	}
	if err := rb.Put(ctx, second); err != nil {
		t.Fatalf("second Put: %v", err)
	}
	got, err := rb.Get(ctx, "r-1")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	assertEqual(t, "overwritten result", normResult(got), normResult(second))
}

func testResultsBatchPutAppliesInOrder(t *testing.T, open opener[stemdriver.ResultBackend], ns string) {
	ctx := testContext(t)
	rb := open(t, ns)
	at := now()
	batch := []*stemtype.TaskResult{
		{ID: "r-1", Task: "t", State: stemtype.StatePending, UpdatedAt: at},
		{ID: "r-2", Task: "t", State: stemtype.StatePending, UpdatedAt: at},
		{ID: "r-1", Task: "t", State: stemtype.StateStarted, UpdatedAt: at.Add(time.Millisecond)},
		{ID: "r-1", Task: "t", State: stemtype.StateSucceeded, Result: json.RawMessage(`42`), UpdatedAt: at.Add(2 * time.Millisecond)},
	}
	if err := rb.Put(ctx, batch...); err != nil {
		t.Fatalf("Put of %d: %v", len(batch), err)
	}
	for id, want := range map[string]*stemtype.TaskResult{"r-1": batch[3], "r-2": batch[1]} {
		got, err := rb.Get(ctx, id)
		if err != nil {
			t.Fatalf("Get %s: %v", id, err)
		}
		assertEqual(t, "result "+id, normResult(got), normResult(want))
	}
}

// testResultsFinalStatesAreFinal: no later write replaces a final state,
// through Put and, when the backend declares ConditionalPut, PutIfState.
func testResultsFinalStatesAreFinal(t *testing.T, open opener[stemdriver.ResultBackend], ns string, caps Capabilities) {
	ctx := testContext(t)
	rb := open(t, ns)
	var cp stemdriver.ConditionalPutter
	if caps.ConditionalPut {
		cp = conditionalPutter(t, rb)
	}
	at := now()
	finals := []stemtype.State{stemtype.StateSucceeded, stemtype.StateFailed, stemtype.StateCancelled}
	for _, final := range finals {
		for _, later := range laterWrites(at, finals) {
			id := fmt.Sprintf("r-%s-%s", final, later.name)
			stored := fullResult(id)
			stored.State = final
			if err := rb.Put(ctx, stored); err != nil {
				t.Fatalf("Put %s: %v", final, err)
			}
			want := cloneResult(t, stored)
			w := cloneResult(t, later.r)
			w.ID = id
			// A refused write is skipped silently: Put succeeds.
			if err := open(t, ns).Put(ctx, w); err != nil {
				t.Fatalf("Put of %s over %s = %v, want nil (skipped)", later.name, final, err)
			}
			// In a batch too, after a write of another id that is
			// applied.
			other := &stemtype.TaskResult{ID: id + "-other", Task: "t", State: stemtype.StateStarted, UpdatedAt: at}
			if err := rb.Put(ctx, other, w); err != nil {
				t.Fatalf("batch Put of %s over %s = %v, want nil", later.name, final, err)
			}
			if cp != nil {
				states := []stemtype.State{stemtype.StatePending, stemtype.StateStarted, stemtype.StateRetry,
					stemtype.StateSucceeded, stemtype.StateFailed, stemtype.StateCancelled}
				if ok, err := cp.PutIfState(ctx, w, states...); err != nil || ok {
					t.Fatalf("PutIfState of %s over %s, allowed from every state = (%v, %v), want (false, nil)", later.name, final, ok, err)
				}
			}
			got, err := open(t, ns).Get(ctx, id)
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			assertEqual(t, fmt.Sprintf("%s result after a %s write", final, later.name), normResult(got), normResult(want))
			if got, err := rb.Get(ctx, id+"-other"); err != nil || got.State != stemtype.StateStarted {
				t.Fatalf("the other result of the batch = (%+v, %v), want started", got, err)
			}
		}
	}
	// Within one call, the first final state wins as well.
	batch := []*stemtype.TaskResult{
		{ID: "b-1", Task: "t", State: stemtype.StateStarted, UpdatedAt: at},
		{ID: "b-1", Task: "t", State: stemtype.StateFailed, UpdatedAt: at},
		{ID: "b-1", Task: "t", State: stemtype.StateSucceeded, UpdatedAt: at},
		{ID: "b-1", Task: "t", State: stemtype.StateStarted, UpdatedAt: at},
	}
	if err := rb.Put(ctx, batch...); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if got, err := rb.Get(ctx, "b-1"); err != nil || got.State != stemtype.StateFailed {
		t.Fatalf("after started, failed, succeeded, started in one call: (%+v, %v), want failed", got, err)
	}
}

func testResultsFinalStatesHoldInLargeBatches(t *testing.T, open opener[stemdriver.ResultBackend], ns string) {
	ctx := testContext(t)
	rb := open(t, ns)
	const n = 2500 // more than one chunk of a pipelining backend
	at := now()
	first := make([]*stemtype.TaskResult, n)
	later := make([]*stemtype.TaskResult, n)
	for i := range first {
		id := fmt.Sprintf("r-%04d", i)
		state := stemtype.StateStarted
		if i%2 == 0 {
			state = stemtype.StateSucceeded
		}
		first[i] = &stemtype.TaskResult{ID: id, Task: "t", State: state, UpdatedAt: at}
		later[i] = &stemtype.TaskResult{ID: id, Task: "t", State: stemtype.StatePending, UpdatedAt: at}
	}
	if err := rb.Put(ctx, first...); err != nil {
		t.Fatalf("Put of %d: %v", n, err)
	}
	if err := open(t, ns).Put(ctx, later...); err != nil {
		t.Fatalf("second Put of %d: %v", n, err)
	}
	ids := make([]string, n)
	for i, r := range first {
		ids[i] = r.ID
	}
	got, err := rb.GetMany(ctx, ids...)
	if err != nil {
		t.Fatalf("GetMany: %v", err)
	}
	for i, r := range got {
		want := stemtype.StatePending
		if i%2 == 0 {
			want = stemtype.StateSucceeded
		}
		if r == nil || r.State != want {
			t.Fatalf("result %d after a pending over started/succeeded: %+v, want %s", i, r, want)
		}
	}
}

func testResultsConcurrentWritersEndFinal(t *testing.T, open opener[stemdriver.ResultBackend], ns string) {
	ctx := testContext(t)
	const tasks, writers, rounds = 20, 6, 15
	conns := []stemdriver.ResultBackend{open(t, ns), open(t, ns), open(t, ns)}
	at := now()
	final := func(id string) *stemtype.TaskResult {
		return &stemtype.TaskResult{ID: id, Task: "t", State: stemtype.StateSucceeded,
			Result: json.RawMessage(`"done"`), WorkerID: "final", UpdatedAt: at, FinishedAt: at}
	}
	var wg sync.WaitGroup
	for w := range writers {
		rb := conns[w%len(conns)]
		wg.Go(func() {
			for round := range rounds {
				for task := range tasks {
					id := fmt.Sprintf("task-%d", task)
					r := &stemtype.TaskResult{ID: id, Task: "t", State: stemtype.StateStarted,
						Progress: &stemtype.Progress{Percent: float64(round), At: at}, WorkerID: fmt.Sprint("w", w), UpdatedAt: at}
					if w == 0 && round == rounds/2 {
						r = final(id) // the final write lands among the others
					}
					if err := rb.Put(ctx, r); err != nil {
						t.Errorf("writer %d: Put: %v", w, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	for task := range tasks {
		id := fmt.Sprintf("task-%d", task)
		got, err := open(t, ns).Get(ctx, id)
		if err != nil {
			t.Fatalf("Get %s: %v", id, err)
		}
		assertEqual(t, "result of "+id+" after concurrent writes", normResult(got), normResult(final(id)))
	}
}

func testResultsNamespacesIsolated(t *testing.T, open opener[stemdriver.ResultBackend], ns string) {
	ctx := testContext(t)
	if err := open(t, ns).Put(ctx, fullResult("r-1")); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if _, err := open(t, newNamespace(t)).Get(ctx, "r-1"); !errors.Is(err, stemdriver.ErrNotFound) {
		t.Fatalf("Get in another namespace = %v, want ErrNotFound", err)
	}
	if _, err := open(t, ns).Get(ctx, "r-1"); err != nil {
		t.Fatalf("Get in the same namespace: %v", err)
	}
}

func testResultsClosedReturnsErrClosed(t *testing.T, open opener[stemdriver.ResultBackend], ns string) {
	ctx := testContext(t)
	rb := open(t, ns)
	if err := rb.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := rb.Put(ctx, fullResult("r-1")); !errors.Is(err, stemdriver.ErrClosed) {
		t.Errorf("Put after Close = %v, want ErrClosed", err)
	}
	if _, err := rb.Get(ctx, "r-1"); !errors.Is(err, stemdriver.ErrClosed) {
		t.Errorf("Get after Close = %v, want ErrClosed", err)
	}
}

// laterWrite is a write that may come after a task's final state: a
// redelivery's started, a late progress update, a re-enqueue's pending, a
// retry, or another final state.
type laterWrite struct {
	name string
	r    *stemtype.TaskResult
}

// laterWrites returns every kind of write that must not replace a final
// state.
func laterWrites(at time.Time, finals []stemtype.State) []laterWrite {
	out := []laterWrite{
		{"started", &stemtype.TaskResult{Task: "t", State: stemtype.StateStarted, Attempt: 3, WorkerID: "w-2", StartedAt: at, UpdatedAt: at}},
		{"progress", &stemtype.TaskResult{Task: "t", State: stemtype.StateStarted, Attempt: 2,
			Progress: &stemtype.Progress{Percent: 99, At: at}, UpdatedAt: at}},
		{"pending", &stemtype.TaskResult{Task: "t", State: stemtype.StatePending, UpdatedAt: at}},
		{"retry", &stemtype.TaskResult{Task: "t", State: stemtype.StateRetry, Attempt: 3, NotBefore: at.Add(time.Minute), UpdatedAt: at}},
	}
	for _, f := range finals {
		out = append(out, laterWrite{"final-" + string(f), &stemtype.TaskResult{Task: "t", State: f,
			Result: json.RawMessage(`"late"`), Error: &stemtype.TaskError{Message: "late"}, UpdatedAt: at, FinishedAt: at}})
	}
	return out
}

// fullResult returns a result with every field set.
func fullResult(id string) *stemtype.TaskResult {
	at := now()
	return &stemtype.TaskResult{
		ID:      id,
		Task:    "stemdrivertest.full",
		Queue:   "q",
		State:   stemtype.StateCancelled,
		Attempt: 2,
		Result:  json.RawMessage(`{"rows":[1,2],"name":"x"}`),
		Error:   &stemtype.TaskError{Message: "revoked by operator", Kind: "revoked"},
		Progress: &stemtype.Progress{
			Percent: 42.5,
			Data:    json.RawMessage(`{"step":"copy"}`),
			At:      at.Add(-time.Second),
		},
		Meta: map[string]string{
			stemtype.MetaRevokedReason: "bad input",
			stemtype.MetaRevokedBy:     "ops",
			stemtype.MetaRevokedAt:     at.Format(time.RFC3339Nano),
		},
		WorkerID:   "w-1",
		StartedAt:  at.Add(-time.Minute),
		FinishedAt: at,
		UpdatedAt:  at,
	}
}

// cloneResult returns a deep copy of r.
func cloneResult(t *testing.T, r *stemtype.TaskResult) *stemtype.TaskResult {
	t.Helper()
	raw, err := json.Marshal(r)
	if err != nil {
		t.Fatalf("encode result: %v", err)
	}
	var c stemtype.TaskResult
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatalf("decode result: %v", err)
	}
	return &c
}

// normResult returns a copy of r that compares equal with reflect.DeepEqual
// to any faithful round trip of it.
func normResult(r *stemtype.TaskResult) *stemtype.TaskResult {
	if r == nil {
		return nil
	}
	c := *r
	c.Result = canonJSON(r.Result)
	c.Meta = emptyNil(r.Meta)
	if r.Error != nil {
		e := *r.Error
		c.Error = &e
	}
	if r.Progress != nil {
		p := *r.Progress
		p.Data = canonJSON(p.Data)
		p.At = normTime(p.At)
		c.Progress = &p
	}
	c.StartedAt = normTime(r.StartedAt)
	c.FinishedAt = normTime(r.FinishedAt)
	c.UpdatedAt = normTime(r.UpdatedAt)
	return &c
}
