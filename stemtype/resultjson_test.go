package stemtype_test

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// sampleStrings are strings of every kind AppendJSON meets: plain ones,
// and ones json.Marshal escapes (quotes, backslashes, HTML characters,
// control characters, non-ASCII, invalid UTF-8, U+2028).
var sampleStrings = []string{"", "a", "0a1b2c3d4e5f", "peers.noop", "default", "succeeded", "w-1",
	`say "hi"`, `back\slash`, "<b>&</b>", "tab\there", "nl\n", "\x00", "é", "日本", "\xff\xfe", "line\u2028sep"}

// sampleString picks a plain string four times in five, so that the fast
// paths are tested most, and any of sampleStrings otherwise.
func sampleString(r *rand.Rand) string {
	if r.IntN(5) > 0 {
		return sampleStrings[r.IntN(7)]
	}
	return sampleStrings[r.IntN(len(sampleStrings))]
}

func sampleTime(r *rand.Rand) time.Time {
	switch r.IntN(6) {
	case 0:
		return time.Time{}
	case 1:
		return time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) // json.Marshal refuses it
	case 2:
		return time.Date(2026, 11, 30, 12, 0, 0, 0, time.FixedZone("odd", 3600+30)) // an offset with seconds
	case 3:
		return time.Date(2026, 11, 30, 12, 0, 0, r.IntN(1e9), time.FixedZone("CET", 3600))
	default:
		return time.Unix(0, r.Int64N(4e18)).UTC()
	}
}

func sampleResult(r *rand.Rand) *stemtype.TaskResult {
	pick := func() string { return sampleString(r) }
	res := &stemtype.TaskResult{ID: pick(), Task: pick(), Queue: pick(), State: stemtype.State(pick()),
		Attempt: r.IntN(5) - 1, WorkerID: pick(), NotBefore: sampleTime(r), StartedAt: sampleTime(r),
		FinishedAt: sampleTime(r), UpdatedAt: sampleTime(r)}
	switch r.IntN(4) {
	case 1:
		res.Result = json.RawMessage(`{ "a" : [1, 2, "<&>"] , "b":null }`)
	case 2:
		res.Result = json.RawMessage(`"x"`)
	case 3:
		res.Result = json.RawMessage(`{bad`)
	}
	if r.IntN(3) == 0 {
		res.Error = &stemtype.TaskError{Message: pick(), Kind: pick()}
	}
	if r.IntN(3) == 0 {
		res.Progress = &stemtype.Progress{Percent: r.Float64() * 100, Data: json.RawMessage(`[1, 2]`), At: sampleTime(r)}
	}
	if r.IntN(3) == 0 {
		res.Meta = map[string]string{pick(): pick(), pick(): pick(), "revokedBy": pick()}
	}
	return res
}

// matchMarshal fails t unless got and err, what an AppendJSON of v
// appended to "prefix", are json.Marshal's bytes after the prefix, or both
// failed.
func matchMarshal(t *testing.T, i int, v any, got []byte, err error) {
	t.Helper()
	want, werr := json.Marshal(v)
	if (werr != nil) != (err != nil) {
		t.Fatalf("case %d: json.Marshal error %v, AppendJSON error %v\n%+v", i, werr, err, v)
	}
	if werr == nil && !bytes.Equal(got, append([]byte("prefix"), want...)) {
		t.Fatalf("case %d:\nAppendJSON   %s\njson.Marshal prefix%s", i, got, want)
	}
}

// AppendJSON writes what json.Marshal writes, or fails where it fails.
func TestResultAppendJSONMatchesMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		res := sampleResult(r)
		got, err := res.AppendJSON([]byte("prefix"))
		matchMarshal(t, i, res, got, err)
	}
	// The common result, every string plain and every time UTC.
	res := &stemtype.TaskResult{ID: "0a1b", Task: "peers.noop", Queue: "default", State: stemtype.StateSucceeded,
		WorkerID: "w1", StartedAt: time.Now().UTC(), FinishedAt: time.Now().UTC(), UpdatedAt: time.Now().UTC()}
	want, _ := json.Marshal(res)
	if got := mustAppend(t, res); !bytes.Equal(got, want) {
		t.Fatalf("a worker's usual result:\nAppendJSON   %s\njson.Marshal %s", got, want)
	}
}

func mustAppend(t *testing.T, r *stemtype.TaskResult) []byte {
	t.Helper()
	b, err := r.AppendJSON(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func FuzzResultAppendJSON(f *testing.F) {
	f.Add("id", "task", "queue", "state", "w", []byte(`{"a":1}`), int64(0), 0)
	f.Add("<id>", "t\u2028", "", "\xff", "", []byte(` [ 1 ] `), int64(1e18), 3600)
	f.Fuzz(func(t *testing.T, id, task, queue, state, worker string, result []byte, nanos int64, offset int) {
		at := time.Unix(0, nanos).In(time.FixedZone("z", offset%100000))
		res := &stemtype.TaskResult{ID: id, Task: task, Queue: queue, State: stemtype.State(state), WorkerID: worker,
			Result: result, StartedAt: at, UpdatedAt: at}
		want, werr := json.Marshal(res)
		got, gerr := res.AppendJSON(nil)
		if (werr != nil) != (gerr != nil) {
			t.Fatalf("json.Marshal error %v, AppendJSON error %v", werr, gerr)
		}
		if werr == nil && !bytes.Equal(got, want) {
			t.Fatalf("\nAppendJSON   %s\njson.Marshal %s", got, want)
		}
	})
}

func BenchmarkResultEncode(b *testing.B) {
	res := &stemtype.TaskResult{ID: "0a1b2c3d4e5f60718293a4b5c6d7e8f9", Task: "peers.noop", Queue: "default",
		State: stemtype.StateSucceeded, WorkerID: "vm-1-abcdef", StartedAt: time.Now().UTC(),
		FinishedAt: time.Now().UTC(), UpdatedAt: time.Now().UTC()}
	b.Run("json.Marshal", func(b *testing.B) {
		for b.Loop() {
			if _, err := json.Marshal(res); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("AppendJSON", func(b *testing.B) {
		var buf []byte
		for b.Loop() {
			var err error
			if buf, err = res.AppendJSON(buf[:0]); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func sampleEnvelope(r *rand.Rand) *stemtype.Envelope {
	pick := func() string { return sampleString(r) }
	e := &stemtype.Envelope{ID: pick(), Task: pick(), Queue: pick(), Attempt: r.IntN(4), Priority: r.IntN(3) - 1,
		NotBefore: sampleTime(r), CreatedAt: sampleTime(r)}
	switch r.IntN(5) {
	case 1:
		e.Args = json.RawMessage(`{"n":1}`)
	case 2:
		e.Args = json.RawMessage(` [ "a<b" , 2 ] `)
	case 3:
		e.Args = json.RawMessage(`nul`)
	}
	if r.IntN(3) == 0 {
		n := r.IntN(10) - 2
		e.MaxRetries = &n
	}
	if r.IntN(3) == 0 {
		e.Headers = map[string]string{pick(): pick(), "traceparent": pick()}
	}
	if r.IntN(3) == 0 {
		e.Sig = pick()
	}
	return e
}

// Envelope.AppendJSON writes what json.Marshal writes, or fails where it
// fails.
func TestEnvelopeAppendJSONMatchesMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 20000 {
		e := sampleEnvelope(r)
		got, err := e.AppendJSON([]byte("prefix"))
		matchMarshal(t, i, e, got, err)
	}
}

func FuzzEnvelopeAppendJSON(f *testing.F) {
	f.Add("id", "task", "queue", []byte(`{"a":1}`), 0, 0, int64(0), "k", "v")
	f.Add("<id>", "t\u2028", "", []byte(` [ 1 ] `), -1, 7, int64(1e18), "", "\xff")
	f.Fuzz(func(t *testing.T, id, task, queue string, args []byte, attempt, priority int, nanos int64, hk, hv string) {
		at := time.Unix(0, nanos).UTC()
		e := &stemtype.Envelope{ID: id, Task: task, Queue: queue, Args: args, Attempt: attempt, Priority: priority,
			CreatedAt: at, NotBefore: at}
		if hk != "" {
			e.Headers = map[string]string{hk: hv}
		}
		want, werr := json.Marshal(e)
		got, gerr := e.AppendJSON(nil)
		if (werr != nil) != (gerr != nil) {
			t.Fatalf("json.Marshal error %v, AppendJSON error %v", werr, gerr)
		}
		if werr == nil && !bytes.Equal(got, want) {
			t.Fatalf("\nAppendJSON   %s\njson.Marshal %s", got, want)
		}
	})
}
