package stem_test

import (
	"encoding/json"
	"testing"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtest"
	"github.com/stem-go/stem/stemtype"
)

// TestArgsRoundTrip: Args marshal as the JSON they hold, so they must
// unmarshal the same way, also as a field of a handler's argument type.
func TestArgsRoundTrip(t *testing.T) {
	type wrapped struct {
		Meta stem.Args `json:"meta"`
	}
	reg := stem.NewRegistry()
	stem.Register(reg, "wrapped", func(tc *stem.TaskContext, a wrapped) (any, error) { return a.Meta, nil }, stem.TaskOptions{})
	stem.Register(reg, "pointer", func(tc *stem.TaskContext, a *stem.Args) (any, error) { return a, nil }, stem.TaskOptions{})
	for _, tc := range []struct {
		task, args, want string
	}{
		{"wrapped", `{"meta": {"x": [1, 2]}}`, `{"x": [1, 2]}`},
		{"pointer", `{"y":true}`, `{"y":true}`},
	} {
		out := stemtest.Run(t, reg, tc.task, json.RawMessage(tc.args), stemtest.RunOptions{})
		if out.State != stemtype.StateSucceeded || string(out.Result) != tc.want {
			t.Errorf("%s: %s %q (%v), want %s", tc.task, out.State, out.Result, out.Err, tc.want)
		}
	}
	var a stem.Args
	if err := json.Unmarshal([]byte(` [1] `), &a); err != nil || string(a) != `[1]` {
		t.Errorf("json.Unmarshal into Args: %q %v", a, err)
	}
}
