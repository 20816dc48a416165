package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stem-go/stem/internal/docsite"
	"github.com/stem-go/stem/internal/testutil"
)

// The docs' console sessions. Every ```console block of docs/*.md is run
// here, through the stem binary TestMain built: lines starting with "$ "
// are commands, the lines after one are its output as shown. The blocks of
// a page run in order, as one reader's session, with no STEM_ variable
// but STEM_HOME set to a directory of the test's own, so they use a fresh
// embedded default store.
//
// The runner understands what the docs write: `stem ARGS`, with leading
// NAME=VALUE assignments; `NAME=$(stem ARGS)`, which captures the output;
// "$NAME" and $NAME in arguments; `echo $?`, the previous command's exit
// code; and a trailing `# comment`. `stem worker start --id ID` runs in the
// background, as in another terminal, until the page's session ends. A
// command must exit 0 unless the next one is `echo $?`.
//
// Output is compared by shape: volatile tokens are replaced, on both
// sides, by the kind of token they are (times, hex ids, durations, numbers)
// and runs of spaces by one, so column widths, ids and timings may differ
// while every word, column and line must match; the test's STEM_HOME reads
// as /home/me/.local/state/stem. Commands that only read (worker ping,
// inspect and stats; task status) are repeated until their output has the
// shape shown, as a reader at a terminal would wait for a task to start,
// for at most waitTimeout.

// docsHome is how the docs show the state directory.
const docsHome = "/home/me/.local/state/stem"

var shapes = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`), "<time>"},
	{regexp.MustCompile(`\b[0-9a-f]{16,}\b`), "<hex>"},
	{regexp.MustCompile(`\b\d+(\.\d+)?(ns|µs|us|ms|s|m|h)(\d+(\.\d+)?(ms|s|m))*\b`), "<duration>"},
	{regexp.MustCompile(`\d+(\.\d+)?`), "<n>"},
	{regexp.MustCompile(`[ \t]+`), " "},
}

// shape returns the lines of out with volatile tokens replaced, trailing
// blank lines dropped.
func shape(out string) []string {
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		for _, s := range shapes {
			l = s.re.ReplaceAllString(l, s.with)
		}
		lines = append(lines, strings.TrimSpace(l))
	}
	if len(lines) == 1 && lines[0] == "" {
		return nil
	}
	return lines
}

// docStep is one command of a console block and its output as shown.
type docStep struct {
	file string
	line int
	cmd  string
	want []string
}

func (s docStep) String() string { return s.file + ":" + strconv.Itoa(s.line) + ": $ " + s.cmd }

// docSteps returns the steps of a page's console blocks, in order.
func docSteps(t *testing.T, file string, blocks []docsite.CodeBlock) []docStep {
	var steps []docStep
	for _, b := range blocks {
		if b.Lang != "console" {
			continue
		}
		for i, l := range strings.Split(strings.TrimRight(b.Code, "\n"), "\n") {
			if cmd, ok := strings.CutPrefix(l, "$ "); ok {
				steps = append(steps, docStep{file: file, line: b.Line + 1 + i, cmd: cmd})
				continue
			}
			if len(steps) == 0 || steps[len(steps)-1].file != file || steps[len(steps)-1].line < b.Line {
				t.Fatalf("%s:%d: output before any $ command in a console block", file, b.Line+1+i)
			}
			steps[len(steps)-1].want = append(steps[len(steps)-1].want, l)
		}
	}
	return steps
}

func TestDocsConsoleSessions(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "docs", "*.md"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no docs found: %v", err)
	}
	sessions := 0
	for _, file := range files {
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		p, err := docsite.Parse(file, src)
		if err != nil {
			t.Fatal(err)
		}
		steps := docSteps(t, file, p.Blocks)
		if len(steps) == 0 {
			continue
		}
		sessions++
		t.Run(filepath.Base(file), func(t *testing.T) {
			t.Parallel()
			s := &docSession{t: t, home: filepath.Join(t.TempDir(), "state"), vars: map[string]string{}}
			for i, st := range steps {
				next := ""
				if i+1 < len(steps) {
					next = steps[i+1].cmd
				}
				s.run(st, next)
			}
		})
	}
	if sessions < 3 {
		t.Fatalf("only %d pages with console sessions: the runner is not finding the docs' blocks", sessions)
	}
}

// docSession is one page's session: its shell variables, the last exit
// code and its state directory.
type docSession struct {
	t        *testing.T
	home     string
	vars     map[string]string
	lastCode int
}

var (
	captureRe = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)=\$\((.*)\)$`)
	assignRe  = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*=`)
	readOnly  = [][]string{{"worker", "ping"}, {"worker", "inspect"}, {"worker", "stats"}, {"task", "status"}}
)

func (s *docSession) run(st docStep, next string) {
	t := s.t
	t.Helper()
	cmd := stripComment(st.cmd)
	if cmd == "echo $?" {
		if got := strconv.Itoa(s.lastCode); !slices.Equal([]string{got}, st.want) {
			t.Fatalf("%s: exit code %s, the docs show %q", st, got, st.want)
		}
		return
	}
	capture := ""
	if m := captureRe.FindStringSubmatch(cmd); m != nil {
		capture, cmd = m[1], m[2]
		if len(st.want) > 0 {
			t.Fatalf("%s: a captured command shows no output", st)
		}
	}
	words, err := s.split(cmd)
	if err != nil {
		t.Fatalf("%s: %v", st, err)
	}
	env := map[string]string{"STEM_HOME": s.home}
	for len(words) > 0 && assignRe.MatchString(words[0]) {
		k, v, _ := strings.Cut(words[0], "=")
		env[k] = v
		words = words[1:]
	}
	if len(words) == 0 || words[0] != "stem" {
		t.Fatalf("%s: the docs runner runs stem commands only (see e2e/docs_test.go)", st)
	}
	args := words[1:]
	if len(args) >= 2 && args[0] == "worker" && args[1] == "start" {
		s.startWorker(st, env, args)
		return
	}
	retry := slices.ContainsFunc(readOnly, func(p []string) bool { return len(args) >= 2 && slices.Equal(args[:2], p) })
	deadline := time.Now().Add(waitTimeout)
	for {
		out, code := s.exec(st, env, args)
		s.lastCode = code
		if capture != "" {
			if code != 0 {
				t.Fatalf("%s: exit %d\n%s", st, code, out)
			}
			s.vars[capture] = strings.TrimSpace(out)
			return
		}
		got := shape(strings.ReplaceAll(out, s.home, docsHome))
		want := shape(strings.Join(st.want, "\n"))
		ok := slices.Equal(got, want) && (code == 0 || next == "echo $?")
		if ok {
			return
		}
		if !retry || time.Now().After(deadline) {
			t.Fatalf("%s: exit %d; the output's shape differs from the docs'.\nshape shown:\n  %s\nshape got:\n  %s\noutput:\n%s",
				st, code, strings.Join(want, "\n  "), strings.Join(got, "\n  "), out)
		}
		time.Sleep(pollEvery)
	}
}

// exec runs the stem binary with args, stdout and stderr in one stream as
// on a terminal, and returns the output and the exit code.
func (s *docSession) exec(st docStep, env map[string]string, args []string) (string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, stemBin, args...)
	cmd.Env = environ(env)
	cmd.Dir = s.t.TempDir()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &ee) && ee.Exited():
		return out.String(), ee.ExitCode()
	}
	s.t.Fatalf("%s: %v\n%s", st, err, out.String())
	return "", 0
}

// startWorker starts `stem worker start` in the background and waits
// until it answers a ping; the session's end stops it warmly.
func (s *docSession) startWorker(st docStep, env map[string]string, args []string) {
	t := s.t
	id := ""
	for i, a := range args {
		if a == "--id" && i+1 < len(args) {
			id = args[i+1]
		}
	}
	if id == "" {
		t.Fatalf("%s: a worker the docs start needs --id, so the session can wait for it", st)
	}
	if len(st.want) > 0 {
		t.Fatalf("%s: a worker's log is not shown", st)
	}
	cmd := exec.Command(stemBin, args...)
	cmd.Env = environ(env)
	logs := &testutil.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", st, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(waitTimeout):
			_ = cmd.Process.Kill()
			<-exited
		}
		if strings.Contains(logs.String(), "DATA RACE") {
			t.Errorf("race detected in worker %s", id)
		}
		if t.Failed() {
			t.Logf("worker %s log:\n%s", id, logs.String())
		}
	})
	deadline := time.Now().Add(waitTimeout)
	for {
		if _, code := s.exec(st, env, []string{"worker", "ping", "--worker", id, "--timeout", "500ms"}); code == 0 {
			return
		}
		select {
		case <-exited:
			t.Fatalf("%s: the worker exited (%v) before answering a ping", st, waitErr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the worker did not answer a ping within %s", st, waitTimeout)
		}
		time.Sleep(pollEvery)
	}
}

// stripComment removes a trailing ` # comment` outside quotes.
func stripComment(cmd string) string {
	quote := byte(0)
	for i := 0; i < len(cmd); i++ {
		switch c := cmd[i]; {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '#' && i > 0 && (cmd[i-1] == ' ' || cmd[i-1] == '\t'):
			return strings.TrimSpace(cmd[:i])
		}
	}
	return strings.TrimSpace(cmd)
}

// split splits a command line into words as a POSIX shell would, for the
// subset the docs use: spaces, single quotes, double quotes, and $NAME or
// ${NAME} expanded from the session's variables (not in single quotes).
func (s *docSession) split(line string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\'':
			end := strings.IndexByte(line[i+1:], '\'')
			if end < 0 {
				return nil, errors.New("unterminated single quote")
			}
			cur.WriteString(line[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case c == '"':
			j := i + 1
			for ; j < len(line) && line[j] != '"'; j++ {
				if line[j] == '\\' && j+1 < len(line) {
					j++
				}
			}
			if j >= len(line) {
				return nil, errors.New("unterminated double quote")
			}
			expanded, err := s.expand(line[i+1 : j])
			if err != nil {
				return nil, err
			}
			cur.WriteString(expanded)
			i = j
			inWord = true
		case c == '$' || c == '`' || c == '|' || c == ';' || c == '&' || c == '<' || c == '>' || c == '\\':
			if c != '$' {
				return nil, errors.New("shell syntax the docs runner does not run: " + string(c))
			}
			j := i + 1
			for j < len(line) && (line[j] == '_' || line[j] >= 'A' && line[j] <= 'Z' || line[j] >= 'a' && line[j] <= 'z' || line[j] >= '0' && line[j] <= '9') {
				j++
			}
			expanded, err := s.expand(line[i:j])
			if err != nil {
				return nil, err
			}
			cur.WriteString(expanded)
			i = j - 1
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

var varRe = regexp.MustCompile(`\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)`)

// expand expands $NAME and ${NAME} in s from the session's variables; an
// unset one is an error (the docs would show a broken session), and so is
// any other use of $ or a backslash.
func (s *docSession) expand(str string) (string, error) {
	var err error
	out := varRe.ReplaceAllStringFunc(str, func(m string) string {
		name := strings.Trim(m[1:], "{}")
		v, ok := s.vars[name]
		if !ok {
			err = errors.New("$" + name + " is not set by an earlier command of the page")
		}
		return v
	})
	if err == nil && (strings.Contains(varRe.ReplaceAllString(str, ""), "$") || strings.Contains(str, "\\")) {
		err = errors.New("shell syntax the docs runner does not run in " + strconv.Quote(str))
	}
	return out, err
}
