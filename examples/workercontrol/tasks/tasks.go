// Package tasks holds the tasks of docs/worker-control.md: reports.build
// runs inline, in the worker's process; images.render runs isolated, in a
// child process of the worker.
package tasks

import "github.com/stem-go/stem"

// Register adds every task of the example to reg. A program calls it in
// every role: the worker's child processes look isolated tasks up by name.
func Register(reg *stem.Registry) {
	RegisterReport(reg)
	RegisterRender(reg)
	RegisterCrunch(reg)
}
