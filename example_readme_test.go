package stem_test

import (
	"context"
	"log"
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

	// The four stores, from STEM_BROKER_URL, STEM_RESULT_BACKEND_URL and
	// STEM_REVOKE_STORE_URL (the embedded default when unset)
	stores, err := stemurl.New().Open(ctx, stemurl.FromEnv(os.Getenv), stemurl.AllRoles,
		stemdriver.Options{Namespace: "stem"})
	if err != nil {
		log.Fatal(err) // matches stemdriver.ErrBadConfig when the URLs can never work
	}
	defer stores.Close()

	// Producer
	client, err := stem.NewClient(stem.ClientConfig{Broker: stores.Broker, Results: stores.Results, Registry: reg})
	if err != nil {
		log.Fatal(err)
	}
	id, err := client.Enqueue(ctx, "email.send", EmailArgs{To: "a@example.com"}, stem.EnqueueOptions{Countdown: time.Minute})
	if err != nil {
		log.Fatal(err)
	}
	res, err := client.Wait(ctx, id) // res.State: succeeded, failed or cancelled

	// Worker (in another process): runs until ctx is cancelled, then shuts down warmly
	w, err := stem.NewWorker(stem.WorkerConfig{Registry: reg, Broker: stores.Broker, Results: stores.Results,
		Revokes: stores.Revokes, Control: stores.Control, Concurrency: 20})
	if err != nil {
		log.Fatal(err)
	}
	err = w.Run(ctx)
	// README end
	_, _ = res, err
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
