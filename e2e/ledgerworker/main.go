// Command ledgerworker is the stem CLI with one more task, for the
// end-to-end tests that count executions: ledger.append {"ms": N} sleeps
// N milliseconds, then appends "TASKID PID\n" to the file named by
// LEDGER_FILE. Each line is one write to a file opened with O_APPEND, so
// lines of several processes never interleave; the ledger lives outside
// the broker, so lost and duplicated executions are counted, not guessed.
// When LEDGER_STARTS_FILE is set too, each run first appends
// "TASKID PID UNIXNANO\n" to it as it starts, so that a test knows which
// tasks a killed worker was running and when another one ran them again.
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
	path, starts := os.Getenv("LEDGER_FILE"), os.Getenv("LEDGER_STARTS_FILE")
	stem.Register(reg, "ledger.append", func(tc *stem.TaskContext, a ledgerArgs) (any, error) {
		if path == "" {
			return nil, fmt.Errorf("ledger.append: LEDGER_FILE is not set")
		}
		if starts != "" {
			if err := appendLine(starts, fmt.Sprintf("%s %d %d\n", tc.TaskID(), os.Getpid(), time.Now().UnixNano())); err != nil {
				return nil, err
			}
		}
		select {
		case <-time.After(time.Duration(a.MS) * time.Millisecond):
		case <-tc.Done():
			return nil, tc.Err()
		}
		return nil, appendLine(path, fmt.Sprintf("%s %d\n", tc.TaskID(), os.Getpid()))
	}, stem.TaskOptions{})
	os.Exit(stemcli.Main(stemcli.Config{Registry: reg, Name: "ledgerworker"}, os.Args[1:]))
}

// appendLine appends line to the file at path in one write.
func appendLine(path, line string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(line)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
