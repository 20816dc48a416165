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
