// Command ledgerworker is the stem CLI with one more task, for the
// end-to-end tests that count executions: ledger.append {"ms": N} sleeps
// N milliseconds, then appends "TASKID PID\n" to the file named by
// LEDGER_FILE. Each line is one write to a file opened with O_APPEND, so
// lines of several processes never interleave; the ledger lives outside
// the broker, so lost and duplicated executions are counted, not guessed.
package main

import (
	"fmt"
	"os"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/demotasks"
	"github.com/stem-go/stem/stemcli"
)

// ledgerArgs are ledger.append's arguments.
type ledgerArgs struct {
	MS int `json:"ms"`
}

func main() {
	reg := stem.NewRegistry()
	demotasks.Register(reg)
	path := os.Getenv("LEDGER_FILE")
	stem.Register(reg, "ledger.append", func(tc *stem.TaskContext, a ledgerArgs) (any, error) {
		if path == "" {
			return nil, fmt.Errorf("ledger.append: LEDGER_FILE is not set")
		}
		select {
		case <-time.After(time.Duration(a.MS) * time.Millisecond):
		case <-tc.Done():
			return nil, tc.Err()
		}
		f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if _, err := fmt.Fprintf(f, "%s %d\n", tc.TaskID(), os.Getpid()); err != nil {
			return nil, err
		}
		return nil, nil
	}, stem.TaskOptions{})
	os.Exit(stemcli.Main(stemcli.Config{Registry: reg, Name: "ledgerworker"}, os.Args[1:]))
}
