package stem_test

import (
	"encoding/json"
	"slices"
	"strings"
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

// TestRegisterPanicsOnProgrammingErrors: a registration that cannot be
// right panics at start-up, naming the task, rather than leave a worker
// without the handler it was meant to have.
func TestRegisterPanicsOnProgrammingErrors(t *testing.T) {
	ok := func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }
	reg := stem.NewRegistry()
	stem.Register(reg, "taken", ok, stem.TaskOptions{})
	for _, tc := range []struct {
		name, want string
		register   func()
	}{
		{"empty name", "empty name", func() { stem.Register(reg, "", ok, stem.TaskOptions{}) }},
		{"nil handler", `"nil-fn": nil handler`, func() {
			stem.Register[stem.Args](reg, "nil-fn", nil, stem.TaskOptions{})
		}},
		{"nil isolated entrypoint", `"nil-iso": nil handler`, func() {
			stem.Register[stem.Args](reg, "nil-iso", nil, stem.TaskOptions{Isolated: true})
		}},
		{"negative retries", `"neg": Options.MaxRetries is negative`, func() {
			stem.Register(reg, "neg", ok, stem.TaskOptions{MaxRetries: -1})
		}},
		{"duplicate", `"taken": already registered`, func() { stem.Register(reg, "taken", ok, stem.TaskOptions{Isolated: true}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				err, _ := recover().(error)
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("panic %v, want an error saying %q", err, tc.want)
				}
			}()
			tc.register()
		})
	}
	if got := reg.Names(); !slices.Equal(got, []string{"taken"}) {
		t.Fatalf("registered %v after refused registrations, want only [taken]", got)
	}
	if task, _ := reg.Lookup("taken"); task.IsIsolated() || task.Run == nil {
		t.Fatalf("the refused duplicate replaced the first registration: %+v", task)
	}
}

// TestRegisterIsolated: TaskOptions.Isolated makes fn the isolated
// entrypoint, and Queues lists every task's queue.
func TestRegisterIsolated(t *testing.T) {
	reg := stem.NewRegistry()
	stem.Register(reg, "inline", func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }, stem.TaskOptions{Queue: "a"})
	stem.Register(reg, "iso", func(*stem.TaskContext, int) (any, error) { return nil, nil }, stem.TaskOptions{Isolated: true})
	iso, _ := reg.Lookup("iso")
	inline, _ := reg.Lookup("inline")
	if !iso.IsIsolated() || iso.Run != nil || inline.IsIsolated() || inline.Run == nil {
		t.Fatalf("isolated %+v, inline %+v", iso, inline)
	}
	if got := reg.Queues(); !slices.Equal(got, []string{"a", "default"}) {
		t.Fatalf("queues %v", got)
	}
}
