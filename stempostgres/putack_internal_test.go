package stempostgres

import (
	"testing"

	"github.com/stem-go/stem/stemtype"
)

// foldResults leaves what applying the results in order would: the first
// final result of an id, else its last; ids keep their first position.
func TestFoldResults(t *testing.T) {
	r := func(id string, st stemtype.State, v string) *stemtype.TaskResult {
		return &stemtype.TaskResult{ID: id, State: st, Result: []byte(v)}
	}
	got := foldResults([]*stemtype.TaskResult{
		r("a", stemtype.StateStarted, "1"), r("b", stemtype.StateStarted, "2"),
		r("a", stemtype.StateSucceeded, "3"), r("b", stemtype.StateStarted, "4"),
		r("a", stemtype.StateFailed, "5"), r("c", stemtype.StatePending, "6"),
	})
	want := []string{"a:succeeded:3", "b:started:4", "c:pending:6"}
	if len(got) != len(want) {
		t.Fatalf("folded %d results, want %d", len(got), len(want))
	}
	for i, res := range got {
		if s := res.ID + ":" + string(res.State) + ":" + string(res.Result); s != want[i] {
			t.Errorf("folded[%d] = %s, want %s", i, s, want[i])
		}
	}
}
