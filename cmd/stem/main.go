// Command stem enqueues tasks, runs workers and controls them live. It
// registers the demo tasks (demo.echo, demo.sleep, demo.fail, demo.flaky,
// and demo.sleep-isolated, demo.spin-isolated and demo.crash-isolated,
// which run in child processes of the worker), so everything can be tried
// without writing Go; programs with their own tasks embed the same commands
// with package stemcli.
package main

import (
	"os"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/demotasks"
	"github.com/stem-go/stem/stemcli"
)

// register adds every demo task to reg. It runs in the worker and, for
// the isolated tasks, in the worker's child processes: stemcli.Main serves
// the child role with the same registry. A bad registration panics.
func register(reg *stem.Registry) {
	demotasks.Register(reg)
	demotasks.RegisterIsolated(reg)
}

func main() {
	reg := stem.NewRegistry()
	register(reg)
	os.Exit(stemcli.Main(stemcli.Config{Registry: reg, Demo: register}, os.Args[1:]))
}
