package stemcli_test

import (
	"errors"
	"io"
	"testing"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemcli"
)

// Usage errors reach a program that embeds the tree (New, then Execute) as
// an *ExitError with ExitUsage, so the exit code is chosen by type and not by
// matching cobra's message text.
func TestUsageErrorsAreTyped(t *testing.T) {
	for _, args := range [][]string{
		{"task", "status"},               // cobra.ExactArgs
		{"task", "status", "a", "b"},     // cobra.ExactArgs
		{"worker", "ping", "extra"},      // cobra.NoArgs on a leaf
		{"completion", "bash", "x", "y"}, // cobra's own completion command
		{"worker", "ping", "--no-such"},  // flag error
		{"nonsense"},                     // unknown command
		{"completion", "bogus"},          // unknown shell: cobra prints help, exit 0
		{"help", "bogus"},                // unknown help topic: cobra prints usage, exit 0
		{"help", "worker", "ping", "x"},  // a help topic with extra words
	} {
		cmd := stemcli.New(stemcli.Config{Registry: stem.NewRegistry(), Stdout: io.Discard, Stderr: io.Discard,
			Getenv: func(string) string { return "" }})
		cmd.SetArgs(args)
		err := cmd.Execute()
		var ee *stemcli.ExitError
		if !errors.As(err, &ee) || ee.Code != stemcli.ExitUsage {
			t.Errorf("%q: error %v (%T), want an *ExitError with ExitUsage", args, err, err)
		}
	}
}
