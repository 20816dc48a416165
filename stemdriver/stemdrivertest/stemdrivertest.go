// Package stemdrivertest is the conformance suite that every stem backend
// runs against itself: RunBroker, RunResults, RunRevokes and RunControl
// check the contracts written in package stemdriver.
//
// A backend wires itself in a few lines of its own tests:
//
//	func TestBroker(t *testing.T) {
//		stemdrivertest.RunBroker(t, func(t *testing.T, namespace string) stemdriver.Broker {
//			b := openMyBroker(t, namespace) // a new connection on every call
//			t.Cleanup(func() { b.Close() })
//			return b
//		})
//	}
//
// What the suite asks of an opener:
//   - Every call returns a new connection (or the nearest thing the backend
//     has); calls with the same namespace share data, as connections to one
//     server do. The suite opens several where a property is about several
//     connections or hosts: publisher and subscriber, two revokers.
//   - The opener registers Close with t.Cleanup. The suite closes some
//     drivers itself to check stemdriver.ErrClosed, so that cleanup may be a
//     second Close; it should ignore its error.
//   - An opener that cannot reach its service calls t.Skip naming the
//     variable to set (or t.Fatal when the project requires services).
//
// The suite generates a fresh random namespace for every subtest (revoke
// records carry theirs), so repeated runs against a persistent server never
// see each other's data, and it runs its subtests in parallel.
//
// Limits, stated honestly:
//   - Timing is never asserted. Leases and delays are a few hundred
//     milliseconds so the suite is fast; what is checked is order (a delayed
//     message is not claimed before its NotBefore by the test's clock) and
//     outcome (a message is claimed, or it is not). The test's clock and the
//     server's are assumed to agree, as they do on one machine.
//   - A Claim that returns nothing is normal by contract, so the suite claims
//     in a loop (bounded by a generous guard) wherever it waits for a
//     message, except where the property under test is that a single
//     blocking Claim wakes up for a publish.
//   - Backend-specific behaviour is left to each backend's own tests:
//     undecodable stored messages, priorities, result retention, where dead
//     letters are kept, and what a double Ack returns.
//   - Absence is checked over a short window (a message that must never
//     come back is looked for after its lease has passed), which cannot
//     prove it never comes back later.
package stemdrivertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"reflect"
	"slices"
	"testing"
	"time"
)

// guard bounds every wait of the suite so a broken driver fails a test
// instead of hanging it. It is never a performance threshold.
const guard = 30 * time.Second

// newNamespace returns a namespace no earlier run has used.
func newNamespace(t *testing.T) string {
	t.Helper()
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("stemdrivertest: random namespace: %v", err)
	}
	return "t" + hex.EncodeToString(b[:])
}

// testContext returns the test's context bounded by guard.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), guard)
	t.Cleanup(cancel)
	return ctx
}

// now returns the current time as stored by every backend the suite knows:
// UTC, millisecond precision, no monotonic reading.
func now() time.Time {
	return time.Now().UTC().Truncate(time.Millisecond)
}

// normTime strips the monotonic reading and location of tm, so that equal
// instants compare equal with reflect.DeepEqual.
func normTime(tm time.Time) time.Time {
	return tm.Round(0).UTC()
}

// canonJSON re-encodes raw with sorted keys and no spaces, so that
// documents a backend reformatted (a jsonb column) compare equal. Empty
// stays nil; bytes that are not JSON are kept as they are.
func canonJSON(raw []byte) []byte {
	if len(raw) == 0 {
		return nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return raw
	}
	out, err := json.Marshal(v)
	if err != nil {
		return raw
	}
	return out
}

// emptyNil returns nil for an empty map, so that nil and empty compare
// equal.
func emptyNil[M ~map[K]V, K comparable, V any](m M) M {
	if len(m) == 0 {
		return nil
	}
	return m
}

// emptyNilSlice returns nil for an empty slice.
func emptyNilSlice[S ~[]E, E any](s S) S {
	if len(s) == 0 {
		return nil
	}
	return s
}

// assertEqual fails t when the normalized got and want differ, showing both
// as JSON.
func assertEqual[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		t.Fatalf("%s differs:\n got: %s\nwant: %s", what, g, w)
	}
}

// mustBytes fails t unless got equals want byte for byte.
func mustBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: got %q, want %q", what, got, want)
	}
}

// sortedCopy returns a sorted copy of s.
func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}
