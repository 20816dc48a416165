// Command workercontrol is the program of docs/worker-control.md: the stem
// CLI embedded in a program with tasks of its own, one inline
// (reports.build) and one isolated (images.render).
//
//	go run ./examples/workercontrol worker start --id w1
//	go run ./examples/workercontrol enqueue images.render --args '{"tiles": 40}'
package main

import (
	"os"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/examples/workercontrol/tasks"
	"github.com/stem-go/stem/stemcli"
)

func main() {
	reg := stem.NewRegistry()
	tasks.Register(reg)
	// Main serves the child role first: in a child process of the worker
	// it runs images.render, found by name in this same registry, and
	// never returns. In every other role it runs the command line.
	os.Exit(stemcli.Main(stemcli.Config{Registry: reg, Name: "workercontrol"}, os.Args[1:]))
}
