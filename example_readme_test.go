package stem_test

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemurl"
)

// EmailArgs are the arguments of the README's email.send task.
type EmailArgs struct {
	To     string   `json:"to"`
	Chunks []string `json:"chunks"`
}

// send stands for the README's mail delivery.
func send(ctx context.Context, chunk string) {}

// Example_readme is the README's "A task in Go", word for word between the
// markers (TestREADMEExample checks it), so that it keeps compiling. It
// opens the backends of the environment's URLs, so it has no Output and
// is compiled, not run; Example is the runnable version.
func Example_readme() {
	ctx := context.Background()
	// README begin
	reg := stem.NewRegistry()
	stem.Register(reg, "email.send", func(tc *stem.TaskContext, a EmailArgs) (any, error) {
		for _, chunk := range a.Chunks {
			if err := tc.Heartbeat(); err != nil { // a checkpoint: errors.Is(err, stem.ErrTaskRevoked) once terminated
				return nil, err
			}
			send(tc, chunk) // tc is a context.Context
		}
		return "sent", nil
	}, stem.TaskOptions{Queue: "mail", MaxRetries: 3, TimeLimit: time.Minute})

	urls := stemurl.FromEnv(os.Getenv)
	r := stemurl.New()
	opts := stemdriver.Options{Namespace: "stem"}
	broker, _ := r.OpenBroker(ctx, urls.Broker, opts)
	results, _ := r.OpenResults(ctx, urls.Results, opts)

	// Producer
	client, _ := stem.NewClient(stem.ClientConfig{Broker: broker, Results: results, Registry: reg})
	id, _ := client.Enqueue(ctx, "email.send", EmailArgs{To: "a@example.com"}, stem.EnqueueOptions{Countdown: time.Minute})
	res, _ := client.Wait(ctx, id) // res.State: succeeded, failed or cancelled

	// Worker (in another process): runs until ctx is cancelled, then shuts down warmly
	revokes, _ := r.OpenRevokes(ctx, urls.Revokes, opts)
	control, _ := r.OpenControl(ctx, urls.Broker, opts)
	w, _ := stem.NewWorker(stem.WorkerConfig{Registry: reg, Broker: broker, Results: results,
		Revokes: revokes, Control: control, Concurrency: 20})
	_ = w.Run(ctx)
	// README end
	_ = res
}

// TestREADMEExample checks that the README's "A task in Go" is
// Example_readme's code, so that the README cannot show code that does not
// compile.
func TestREADMEExample(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)## A task in Go\n\n```go\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal(`README.md has no "## A task in Go" section with a go code block`)
	}
	src, err := os.ReadFile("example_readme_test.go")
	if err != nil {
		t.Fatal(err)
	}
	e := regexp.MustCompile("(?s)\t// README begin\n(.*?)\t// README end\n").FindSubmatch(src)
	if e == nil {
		t.Fatal("example_readme_test.go lost its README markers")
	}
	var code strings.Builder
	for _, line := range strings.SplitAfter(string(e[1]), "\n") {
		code.WriteString(strings.TrimPrefix(line, "\t"))
	}
	if got, want := string(m[1]), code.String(); got != want {
		t.Fatalf("README.md's \"A task in Go\" differs from Example_readme; make them equal.\nREADME:\n%s\nExample_readme:\n%s", got, want)
	}
}
