package stem_test

import (
	"encoding/json"
	"testing"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// Raw JSON is encoded by one rule for arguments and for inline results
// (internal/jsonvalue): empty stem.Args are no arguments rather than an
// error, and a task's empty stem.Args or json.RawMessage result is no result (an
// empty stem.Args was the JSON null), as isolated tasks store them.
func TestRawJSONArgsAndResultsEncoding(t *testing.T) {
	e := newEnv(t)
	stem.Register(e.reg, "raw", func(tc *stem.TaskContext, a stem.Args) (any, error) {
		var in struct{ Out string }
		if err := a.Decode(&in); err != nil {
			return nil, err
		}
		switch in.Out {
		case "args":
			return stem.Args(`{ "a" : 1 }`), nil
		case "empty_args":
			return stem.Args(nil), nil
		case "empty_raw":
			return json.RawMessage{}, nil
		}
		return "none", nil
	}, stem.TaskOptions{})
	_, stop := e.startWorker(stem.WorkerConfig{})
	defer stop()

	// Enqueueing empty Args failed with "arguments are not valid JSON".
	id := e.enqueue("raw", stem.Args(nil), stem.EnqueueOptions{})
	if r := e.wait(id); r.State != stemtype.StateSucceeded || string(r.Result) != `"none"` {
		t.Fatalf("empty args: state %s result %s error %+v", r.State, r.Result, r.Error)
	}
	for _, c := range []struct{ out, want string }{
		{"args", `{"a":1}`}, // stored results are compacted JSON
		{"empty_args", ``},  // was the JSON null
		{"empty_raw", ``},
	} {
		id := e.enqueue("raw", map[string]string{"Out": c.out}, stem.EnqueueOptions{})
		r := e.wait(id)
		if r.State != stemtype.StateSucceeded || string(r.Result) != c.want {
			t.Errorf("%s: state %s result %q error %+v; want succeeded with %q", c.out, r.State, r.Result, r.Error, c.want)
		}
	}
}
