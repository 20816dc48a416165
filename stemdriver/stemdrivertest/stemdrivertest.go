// Package stemdrivertest is the conformance suite that every stem backend
// runs against itself: Run checks the contracts written in package
// stemdriver, for each role the backend provides.
//
// A backend wires itself in with one test that fills a Harness:
//
//	func TestConformance(t *testing.T) {
//		stemdrivertest.Run(t, stemdrivertest.Harness{
//			Broker: func(t *testing.T, namespace string) stemdriver.Broker {
//				b := openMyBroker(t, namespace) // a new connection on every call
//				t.Cleanup(func() {
//					b.Close()
//					deleteMyNamespace(namespace) // when data outlives the test
//				})
//				return b
//			},
//			Results: ...,
//			Revokes: nil, // a role the backend does not provide
//			Control: ...,
//			Capabilities: stemdrivertest.Capabilities{ConditionalPut: true},
//		})
//	}
//
// What the suite asks of an opener:
//   - Every call returns a new connection (or the nearest thing the backend
//     has); calls with the same namespace share data, as connections to one
//     server do. The suite opens several where a property is about several
//     connections or hosts: publisher and subscriber, two revokers.
//   - The opener receives every namespace the suite writes to before the
//     suite writes to it, and cleans up after itself with t.Cleanup: it
//     closes what it opened and, where the backend's data outlives the test
//     (a Redis server, a database), deletes the namespace's data, so no
//     backend needs to record what the suite touched.
//   - The suite closes some drivers itself to check stemdriver.ErrClosed,
//     so the opener's cleanup may be a second Close; it should ignore its
//     error.
//   - An opener that cannot reach its service calls t.Skip naming the
//     variable to set (or t.Fatal when the project requires services).
//
// Capabilities are declared, not guessed: the optional interfaces of
// package stemdriver (ConditionalPutter, FinalGetter) that the backend's
// result backend implements are named in Harness.Capabilities. The suite
// fails a backend whose declaration and type disagree, either way, and runs
// a capability's tests only when it is declared (they are reported as
// skipped otherwise).
//
// Every property is a function of its own, run as a parallel subtest named
// after its role and property (TestConformance/Broker/MaxRespected) with a
// fresh random namespace (revoke records carry theirs), so repeated runs
// against a persistent server never see each other's data.
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
//   - To check that a control message did not arrive, the suite publishes a
//     broadcast "fence" after it and looks at what arrived before the fence.
//     This assumes that messages published one after another from one
//     connection reach a subscriber in that order, as they do on one server.
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
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
)

// Harness is what a backend gives Run: an opener for each role it
// provides, nil for a role it lacks, and the optional capabilities it
// declares.
type Harness struct {
	// Broker opens a connection to the backend's broker scoped to
	// namespace.
	Broker func(t *testing.T, namespace string) stemdriver.Broker
	// Results opens a connection to the backend's result backend scoped to
	// namespace. Results must be kept for at least a minute.
	Results func(t *testing.T, namespace string) stemdriver.ResultBackend
	// Revokes opens a connection to the backend's revoke store. A revoke
	// store serves every namespace (records carry theirs); namespace names
	// one the suite writes to, through this store or another one, so that
	// the opener can delete its records after the test. A property that
	// writes to several namespaces opens a store for each.
	Revokes func(t *testing.T, namespace string) stemdriver.RevokeStore
	// Control opens a connection to the backend's control transport scoped
	// to namespace.
	Control func(t *testing.T, namespace string) stemdriver.ControlTransport
	// Capabilities declares the optional interfaces the backend
	// implements.
	Capabilities Capabilities
}

// Capabilities declares the optional interfaces of package stemdriver that a
// backend implements. Run fails a backend whose declaration and types
// disagree, and runs a capability's tests only when it is declared.
type Capabilities struct {
	// ConditionalPut: the result backend implements
	// stemdriver.ConditionalPutter.
	ConditionalPut bool
	// FinalGet: the result backend implements stemdriver.FinalGetter.
	FinalGet bool
	// PutAck: the broker implements stemdriver.ResultAcker and AcksWith
	// the Results opener's result backends (Broker and Results needed).
	PutAck bool
	// PendingPublish: the broker implements stemdriver.PendingPublisher and
	// publishes with the Results opener's result backends (Broker and
	// Results needed).
	PendingPublish bool
	// RevokePublish: the control transport implements
	// stemdriver.RevokePublisher and PublishesWith the Revokes opener's
	// stores (Control and Revokes needed).
	RevokePublish bool
	// RevokeChanges: the revoke store implements
	// stemdriver.RevokeChangeLister.
	RevokeChanges bool
}

// Run runs the conformance suite of every role h provides, each property
// as a parallel subtest with a namespace of its own, under a subtest named
// after the role: Broker, Results, Revokes, Control. Results also checks
// that h.Capabilities matches the types the opener returns.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if err := h.validate(); err != nil {
		t.Fatal(err)
	}
	if h.Broker != nil {
		runRole(t, "Broker", h.Broker, h.Capabilities, brokerProperties())
	}
	if h.Results != nil {
		runRole(t, "Results", h.Results, h.Capabilities, resultsProperties(h.Capabilities))
	}
	if h.Revokes != nil {
		runRole(t, "Revokes", h.Revokes, h.Capabilities, revokesProperties(h.Capabilities))
	}
	if h.Control != nil {
		runRole(t, "Control", h.Control, h.Capabilities, controlProperties)
	}
	if h.Broker != nil && h.Results != nil {
		runPutAck(t, h)
		runPendingPublish(t, h)
	}
	if h.Control != nil && h.Revokes != nil {
		runRevokePublish(t, h)
	}
}

// validate reports a Harness that cannot be run: one without an opener, or
// one that declares result backend capabilities without a Results opener.
func (h Harness) validate() error {
	if h.Broker == nil && h.Results == nil && h.Revokes == nil && h.Control == nil {
		return errors.New("stemdrivertest: the Harness has no opener")
	}
	if (h.Capabilities.PutAck || h.Capabilities.PendingPublish) && (h.Broker == nil || h.Results == nil) {
		return errors.New("stemdrivertest: Capabilities.PutAck or PendingPublish declared without both a Broker and a Results opener")
	}
	if h.Capabilities.RevokePublish && (h.Control == nil || h.Revokes == nil) {
		return errors.New("stemdrivertest: Capabilities.RevokePublish declared without both a Control and a Revokes opener")
	}
	if h.Results == nil && (h.Capabilities.ConditionalPut || h.Capabilities.FinalGet) {
		return fmt.Errorf("stemdrivertest: capabilities %+v declared without a Results opener", h.Capabilities)
	}
	if h.Revokes == nil && h.Capabilities.RevokeChanges {
		return errors.New("stemdrivertest: capability RevokeChanges declared without a Revokes opener")
	}
	return nil
}

// opener opens a driver of one role on a namespace; see Harness.
type opener[D any] = func(t *testing.T, namespace string) D

// capability names one field of Capabilities; property.needs uses it.
type capability int

const (
	capNone capability = iota
	capConditionalPut
	capFinalGet
	capRevokeChanges
)

// String returns the name of the Capabilities field.
func (c capability) String() string {
	switch c {
	case capConditionalPut:
		return "ConditionalPut"
	case capFinalGet:
		return "FinalGet"
	case capRevokeChanges:
		return "RevokeChanges"
	}
	return "none"
}

// has reports whether caps declares c.
func (caps Capabilities) has(c capability) bool {
	switch c {
	case capConditionalPut:
		return caps.ConditionalPut
	case capFinalGet:
		return caps.FinalGet
	case capRevokeChanges:
		return caps.RevokeChanges
	}
	return true
}

// property is one test of a role's contract: fn gets the role's opener and
// a namespace no other test uses.
type property[D any] struct {
	name string
	fn   func(t *testing.T, open opener[D], ns string)
	// needs is the capability the property tests; the property is skipped
	// when the backend does not declare it.
	needs capability
}

// runRole runs props as parallel subtests of a subtest named role.
func runRole[D any](t *testing.T, role string, open opener[D], caps Capabilities, props []property[D]) {
	t.Helper()
	t.Run(role, func(t *testing.T) {
		for _, p := range props {
			t.Run(p.name, func(t *testing.T) {
				t.Parallel()
				if !caps.has(p.needs) {
					t.Skipf("the backend does not declare Capabilities.%s", p.needs)
				}
				p.fn(t, open, newNamespace(t))
			})
		}
	})
}

// capabilityMismatches returns one line for each capability whose
// declaration in caps disagrees with what rb implements.
func capabilityMismatches(rb stemdriver.ResultBackend, caps Capabilities) []string {
	var out []string
	check := func(c capability, iface string, implemented bool) {
		switch declared := caps.has(c); {
		case declared && !implemented:
			out = append(out, fmt.Sprintf("Capabilities.%s is declared but %T does not implement %s", c, rb, iface))
		case !declared && implemented:
			out = append(out, fmt.Sprintf("%T implements %s but Capabilities.%s is not declared", rb, iface, c))
		}
	}
	_, cp := rb.(stemdriver.ConditionalPutter)
	check(capConditionalPut, "stemdriver.ConditionalPutter", cp)
	_, fg := rb.(stemdriver.FinalGetter)
	check(capFinalGet, "stemdriver.FinalGetter", fg)
	return out
}

// revokeCapabilityMismatches is capabilityMismatches for a revoke store.
func revokeCapabilityMismatches(rs stemdriver.RevokeStore, caps Capabilities) []string {
	_, implemented := rs.(stemdriver.RevokeChangeLister)
	switch declared := caps.RevokeChanges; {
	case declared && !implemented:
		return []string{fmt.Sprintf("Capabilities.RevokeChanges is declared but %T does not implement stemdriver.RevokeChangeLister", rs)}
	case !declared && implemented:
		return []string{fmt.Sprintf("%T implements stemdriver.RevokeChangeLister but Capabilities.RevokeChanges is not declared", rs)}
	}
	return nil
}

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

// pairedProperty is one property of a capability that spans two roles: fn
// gets the pair of drivers opened on a namespace of its own.
type pairedProperty[P any] struct {
	name string
	fn   func(t *testing.T, p P)
}

// runPaired runs the properties of capability name, whose drivers open
// opens as a pair P: it checks that the declaration agrees with has (which
// reports whether the pair provides the capability, and says what it
// checked), then runs props, each as a parallel subtest with a pair of its
// own, under a subtest named name; they are skipped when the capability is
// not declared.
func runPaired[P any](t *testing.T, name string, declared bool, open func(t *testing.T, ns string) P, has func(P) (bool, string), props []pairedProperty[P]) {
	t.Helper()
	t.Run(name, func(t *testing.T) {
		ok, what := has(open(t, newNamespace(t)))
		switch {
		case declared && !ok:
			t.Fatalf("Capabilities.%s is declared, but not: %s", name, what)
		case !declared && ok:
			t.Fatalf("%s, but Capabilities.%s is not declared", what, name)
		case !ok:
			t.Skipf("the backend does not declare Capabilities.%s", name)
		}
		for _, p := range props {
			t.Run(p.name, func(t *testing.T) {
				t.Parallel()
				p.fn(t, open(t, newNamespace(t)))
			})
		}
	})
}
