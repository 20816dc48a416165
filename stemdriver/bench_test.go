package stemdriver_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// benchEnvelope returns an envelope shaped like a typical task: small JSON
// arguments, a tracing header, both times set.
func benchEnvelope(i int) *stemtype.Envelope {
	retries := 3
	now := time.Date(2026, 11, 30, 12, 0, 0, 123456789, time.UTC)
	return &stemtype.Envelope{
		ID:         fmt.Sprintf("0193a6f4-7c1e-7b3a-9f00-%012x", i),
		Task:       "email.send",
		Args:       json.RawMessage(`{"to":"user@example.com","template":"welcome","locale":"en-GB","n":42}`),
		Queue:      "default",
		MaxRetries: &retries,
		Headers:    map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		NotBefore:  now.Add(time.Minute),
		CreatedAt:  now,
	}
}

// BenchmarkEncodeEnvelopes measures EncodeEnvelopes, the validation and
// JSON encoding every broker's Publish runs, per envelope in batches of
// 100.
func BenchmarkEncodeEnvelopes(b *testing.B) {
	envs := make([]*stemtype.Envelope, 100)
	for i := range envs {
		envs[i] = benchEnvelope(i)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := stemdriver.EncodeEnvelopes(envs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(envs)), "ns/envelope")
}

// BenchmarkDecodeEnvelope measures what a broker's Claim does with each
// stored message: decode the JSON and validate the envelope.
func BenchmarkDecodeEnvelope(b *testing.B) {
	raws, err := stemdriver.EncodeEnvelopes([]*stemtype.Envelope{benchEnvelope(1)})
	if err != nil {
		b.Fatal(err)
	}
	raw := raws[0]
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		var env stemtype.Envelope
		if err := json.Unmarshal(raw, &env); err != nil {
			b.Fatal(err)
		}
		if err := env.Validate(); err != nil {
			b.Fatal(err)
		}
	}
}
