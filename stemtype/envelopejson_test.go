package stemtype_test

import (
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/stem-go/stem/stemtype"
)

// checkDecode fails t unless DecodeEnvelope and json.Unmarshal agree on raw.
func checkDecode(t *testing.T, raw []byte) {
	t.Helper()
	var want, got stemtype.Envelope
	werr := json.Unmarshal(raw, &want)
	gerr := stemtype.DecodeEnvelope(raw, &got)
	if (werr != nil) != (gerr != nil) {
		t.Fatalf("%s\njson.Unmarshal error %v, DecodeEnvelope error %v", raw, werr, gerr)
	}
	if werr == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("%s\nDecodeEnvelope %+v\njson.Unmarshal %+v", raw, got, want)
	}
}

// DecodeEnvelope reads what json.Unmarshal reads: stem's own encoding
// (its fast path), others' (indented, reordered, truncated), and fails
// where json.Unmarshal fails.
func TestDecodeEnvelopeMatchesUnmarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for range 5000 {
		e := sampleEnvelope(r)
		raw, err := e.AppendJSON(nil)
		if err != nil {
			continue
		}
		checkDecode(t, raw)
		if want := e.Headers == nil && plain(e.ID, e.Task, e.Queue, e.Sig); stemtype.DecodeEnvelopeFastForTest(raw) != want {
			t.Fatalf("%s: the fast path read it: %v; want %v", raw, !want, want)
		}
		indented, _ := json.MarshalIndent(e, "", " ")
		checkDecode(t, indented)
		cut := raw[:r.IntN(len(raw))]
		checkDecode(t, cut)
		flipped := append([]byte(nil), raw...)
		const marks = "{}[]\",:0-1e \\x"
		flipped[r.IntN(len(flipped))] = marks[r.IntN(len(marks))]
		checkDecode(t, flipped)
	}
	for _, raw := range []string{
		`{"id":"a","task":"t","queue":"q","attempt":1,"createdAt":"2026-11-30T12:00:00Z"}`,
		`{"id":"a","task":"t","args":null,"queue":"q","attempt":01,"createdAt":"2026-11-30T12:00:00Z"}`,
		`{"id":"a","task":"t","args":{"x":"}"},"queue":"q","attempt":1,"createdAt":"2026-11-30T12:00:00Z"}`,
		`{"id":"a","task":"t","args":"x\"]","queue":"q","attempt":-0,"maxRetries":3,"priority":-2,"createdAt":"2026-11-30T12:00:00Z"}`,
		`{"id":"a","task":"t","queue":"q","attempt":1e2,"createdAt":"2026-11-30T12:00:00Z"}`,
		`{"id":"a","task":"t","queue":"q","attempt":99999999999999999999,"createdAt":"2026-11-30T12:00:00Z"}`,
		`{"id":"a","task":"t","queue":"q","attempt":1,"createdAt":"2026-11-30T12:00:00Z"} `,
		`{"id":"a","task":"t","queue":"q","attempt":1,"createdAt":"2026-11-30T12:00:00Z"}x`,
		`{"id":"a","task":"t","queue":"q","attempt":1,"createdAt":"not a time"}`,
		`{"id":"a","id":"b","task":"t","queue":"q","attempt":1,"createdAt":"2026-11-30T12:00:00Z"}`,
		`{"id":"a","task":"t","args":[1,2}],"queue":"q","attempt":1,"createdAt":"2026-11-30T12:00:00Z"}`,
	} {
		checkDecode(t, []byte(raw))
	}
}

func FuzzDecodeEnvelope(f *testing.F) {
	r := rand.New(rand.NewPCG(7, 8))
	for range 20 {
		if raw, err := sampleEnvelope(r).AppendJSON(nil); err == nil {
			f.Add(raw)
		}
	}
	f.Fuzz(func(t *testing.T, raw []byte) { checkDecode(t, raw) })
}

func BenchmarkEnvelopeDecode(b *testing.B) {
	e := &stemtype.Envelope{ID: "0a1b2c3d4e5f60718293a4b5c6d7e8f9", Task: "peers.noop", Queue: "default",
		Args: json.RawMessage(`{"n":1}`)}
	raw, _ := e.AppendJSON(nil)
	b.Run("json.Unmarshal", func(b *testing.B) {
		for b.Loop() {
			var got stemtype.Envelope
			if err := json.Unmarshal(raw, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("DecodeEnvelope", func(b *testing.B) {
		for b.Loop() {
			var got stemtype.Envelope
			if err := stemtype.DecodeEnvelope(raw, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// plain says whether every s is printable ASCII that JSON writes as is:
// the strings the fast path reads.
func plain(ss ...string) bool {
	for _, s := range ss {
		for _, c := range []byte(s) {
			if c < 0x20 || c >= 0x80 || strings.IndexByte(`"\\<>&`, c) >= 0 {
				return false
			}
		}
	}
	return true
}
