package stemcli_test

import (
	"bytes"
	"regexp"
	"testing"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/demotasks"
	"github.com/stem-go/stem/stemcli"
)

// TestDemoInProcess runs `demo` with the inline demo tasks (the isolated
// ones need a binary that serves the child role, which e2e tests run) and
// checks the final state it reports for each task: the tour waits for
// each step through Client.Status and Client.Wait, so every state it
// prints last is final and the one each task must end in.
func TestDemoInProcess(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := stemcli.Main(stemcli.Config{
		Registry: stem.NewRegistry(),
		Stdout:   &stdout, Stderr: &stderr,
		Getenv: func(string) string { return "" },
		Demo:   demotasks.Register,
	}, []string{"demo"})
	if code != 0 {
		t.Fatalf("demo: exit %d\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
	final := regexp.MustCompile(`(?s)3\. Final states:\n(.*)\nDone in `).FindSubmatch(stdout.Bytes())
	if final == nil {
		t.Fatalf("no final states table:\n%s", &stdout)
	}
	for _, want := range []string{
		`demo\.echo\s+succeeded\s+0\s+result \{"hello":"world"\}`,
		`demo\.flaky\s+succeeded\s+2\s`,
		`demo\.fail\s+failed\s+1\s`,
		`demo\.sleep\s+succeeded\s+0\s`,
		`no\.such\.task\s+failed\s+0\s+stem: unknown task`,
		`demo\.sleep\s+cancelled\s+0\s+revoked by demo: taking too long`,
		`demo\.echo\s+cancelled\s+0\s+revoked by demo: not needed`,
	} {
		if !regexp.MustCompile(want).Match(final[1]) {
			t.Errorf("final states lack %s:\n%s", want, final[1])
		}
	}
}
