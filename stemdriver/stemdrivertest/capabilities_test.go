package stemdrivertest

import (
	"strings"
	"testing"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemredis"
)

// TestCapabilityMismatches: a declaration that disagrees with the result
// backend's type is reported either way; one that agrees is not.
func TestCapabilityMismatches(t *testing.T) {
	mem := stemmem.New().Results(stemdriver.Options{Namespace: "caps"}) // ConditionalPutter only
	t.Cleanup(func() { _ = mem.Close() })
	var redis stemdriver.ResultBackend = (*stemredis.Results)(nil) // both; the type is all that is checked
	bare := struct{ stemdriver.ResultBackend }{mem}                // hides PutIfState: neither

	for _, tc := range []struct {
		name string
		rb   stemdriver.ResultBackend
		caps Capabilities
		want []string // substrings, one per expected mismatch, in order
	}{
		{"memory as declared", mem, Capabilities{ConditionalPut: true}, nil},
		{"redis as declared", redis, Capabilities{ConditionalPut: true, FinalGet: true}, nil},
		{"bare as declared", bare, Capabilities{}, nil},
		{"implemented, not declared", mem, Capabilities{}, []string{"implements stemdriver.ConditionalPutter but Capabilities.ConditionalPut is not declared"}},
		{"declared, not implemented", mem, Capabilities{ConditionalPut: true, FinalGet: true}, []string{"Capabilities.FinalGet is declared but *stemmem.results does not implement stemdriver.FinalGetter"}},
		{"declared, hidden by a wrapper", bare, Capabilities{ConditionalPut: true}, []string{"Capabilities.ConditionalPut is declared but"}},
		{"redis undeclared", redis, Capabilities{}, []string{"Capabilities.ConditionalPut is not declared", "Capabilities.FinalGet is not declared"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := capabilityMismatches(tc.rb, tc.caps)
			if len(got) != len(tc.want) {
				t.Fatalf("mismatches = %q, want %d matching %q", got, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("mismatch %d = %q, want it to contain %q", i, got[i], w)
				}
			}
		})
	}
}

// TestHarnessValidate: Run refuses a Harness without an opener, and
// capabilities declared without a Results opener.
func TestHarnessValidate(t *testing.T) {
	hub := stemmem.New()
	broker := func(t *testing.T, namespace string) stemdriver.Broker {
		return hub.Broker(stemdriver.Options{Namespace: namespace})
	}
	results := func(t *testing.T, namespace string) stemdriver.ResultBackend {
		return hub.Results(stemdriver.Options{Namespace: namespace})
	}
	revokes := func(t *testing.T, _ string) stemdriver.RevokeStore { return hub.Revokes() }
	for _, tc := range []struct {
		name string
		h    Harness
		want string // "" when the Harness is valid
	}{
		{"empty", Harness{}, "no opener"},
		{"capabilities only", Harness{Capabilities: Capabilities{ConditionalPut: true}}, "no opener"},
		{"capabilities without results", Harness{Broker: broker, Capabilities: Capabilities{FinalGet: true}}, "without a Results opener"},
		{"broker only", Harness{Broker: broker}, ""},
		{"results with capabilities", Harness{Results: results, Capabilities: Capabilities{ConditionalPut: true}}, ""},
		{"revoke changes without revokes", Harness{Results: results, Capabilities: Capabilities{RevokeChanges: true}}, "without a Revokes opener"},
		{"revoke changes with revokes only", Harness{Revokes: revokes, Capabilities: Capabilities{RevokeChanges: true}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.h.validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("validate = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("validate = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
