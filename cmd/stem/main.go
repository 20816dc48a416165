// Command stem enqueues tasks, runs workers and controls them live. It
// registers the demo tasks (demo.echo, demo.sleep, demo.fail, demo.flaky), so
// everything can be tried without writing Go; programs with their own tasks
// embed the same commands with package stemcli.
package main

import (
	"fmt"
	"os"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/demotasks"
	"github.com/stem-go/stem/stemcli"
)

func main() {
	reg := stem.NewRegistry()
	if err := demotasks.Register(reg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(stemcli.Main(stemcli.Config{Registry: reg, Demo: demotasks.Register}, os.Args[1:]))
}
