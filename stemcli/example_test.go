package stemcli_test

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemcli"
	"github.com/stem-go/stem/stemurl"
)

// Example embeds the stem CLI in a program with tasks of its own. A
// program's main is one line,
//
//	os.Exit(stemcli.Main(stemcli.Config{Registry: reg}, os.Args[1:]))
//
// so that `myapp worker start` runs its handlers and `myapp enqueue`,
// `myapp task status` and `myapp worker revoke` work on its tasks. Here the
// commands run in process on the in-memory backend (memory://, shared
// through one Resolver), with no worker running.
func Example() {
	reg := stem.NewRegistry()
	stem.Register(reg, "report.build", func(tc *stem.TaskContext, month string) (any, error) {
		return "report for " + month, nil
	}, stem.TaskOptions{})

	resolver := stemurl.New()
	env := map[string]string{stemurl.EnvBroker: "memory://"} // in place of os.Getenv
	run := func(args ...string) (int, string) {
		var out bytes.Buffer
		code := stemcli.Main(stemcli.Config{Registry: reg, Resolver: resolver, Name: "myapp",
			Stdout: &out, Stderr: io.Discard, Getenv: func(k string) string { return env[k] }}, args)
		return code, strings.TrimSpace(out.String())
	}

	_, id := run("enqueue", "report.build", "--args", `"2026-11"`)
	_, state := run("task", "status", id)
	fmt.Println(state)
	// No worker is live: the revoke is stored for workers that start
	// later, the queued task is marked cancelled at once, and the exit
	// code 70 says that no worker answered.
	code, _ := run("worker", "revoke", "--task", id, "--reason", "not needed", "--timeout", "100ms")
	fmt.Println("revoke exit code", code)
	_, state = run("task", "status", id)
	fmt.Println(state)
	// Output:
	// pending
	// revoke exit code 70
	// cancelled
}
