package stemcli_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// fakeWorker announces id on the CLI's memory:// hub and answers every
// control command addressed to it (broadcasts included) with reply (its
// request and worker ids filled in), until the test ends. It stands for a
// worker of another version, or a broken one.
func (e *cliEnv) fakeWorker(id string, reply stemtype.ControlReply) {
	e.t.Helper()
	ctl := e.resolver.Hub("").Control(stemdriver.Options{Namespace: stemtype.DefaultNamespace})
	ctx, cancel := context.WithCancel(context.Background())
	must(e.t, ctl.Announce(ctx, stemtype.WorkerInfo{ID: id, Namespace: stemtype.DefaultNamespace, Instance: "fake-" + id,
		StartedAt: time.Now(), LastSeen: time.Now()}, time.Minute))
	sub, err := ctl.Subscribe(ctx, id)
	must(e.t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for msg := range sub.C() {
			var cmd stemtype.ControlCommand
			if json.Unmarshal(msg, &cmd) != nil {
				continue
			}
			rep := reply
			rep.RequestID, rep.WorkerID = cmd.RequestID, id
			b, _ := json.Marshal(rep)
			_ = ctl.Reply(ctx, cmd.RequestID, b)
		}
	}()
	e.t.Cleanup(func() {
		cancel()
		_ = sub.Close()
		<-done
		_ = ctl.Withdraw(context.Background(), id, "fake-"+id)
	})
}

// TestUnreadableReplyExits70: a worker that answers with status ok but a
// payload that does not decode as the command's reply has not answered the
// question: every worker command reports it on stderr and exits 70, as for
// a worker that replied with an error (DESIGN §5), never 0.
func TestUnreadableReplyExits70(t *testing.T) {
	e := newCLIEnv(t)
	// Every field of the wrong JSON type for its reply.
	e.fakeWorker("odd", stemtype.ControlReply{Status: stemtype.ReplyOK,
		Payload: json.RawMessage(`{"timestamp":1,"inflight":"x","active":1,"pid":"x","tasks":"x","revoked":1}`)})
	for _, args := range [][]string{
		{"worker", "ping"},
		{"worker", "ping", "--json"},
		{"worker", "inspect"},
		{"worker", "inspect", "--json"},
		{"worker", "stats"},
		{"worker", "stats", "--json"},
		{"worker", "revoke", "--task", "0123456789abcdef0123456789abcdef"},
		{"worker", "revoke", "--task", "0123456789abcdef0123456789abcdef", "--json"},
	} {
		code, _, errOut := e.run(args...)
		if code != 70 {
			t.Errorf("%q: exit %d, want 70\nstderr:\n%s", args, code, errOut)
			continue
		}
		if !strings.Contains(errOut, "worker odd") || !strings.Contains(errOut, "decode") {
			t.Errorf("%q: stderr does not name the worker and its unreadable reply:\n%s", args, errOut)
		}
	}
	e.check("ping_unreadable_reply", "worker", "ping")
}

// TestErrorReplyExits70: a worker that replies with an error is named with
// its message on stderr, and the command exits 70.
func TestErrorReplyExits70(t *testing.T) {
	e := newCLIEnv(t)
	e.fakeWorker("sick", stemtype.ControlReply{Status: stemtype.ReplyError, Error: &stemtype.ControlError{Message: "disk full"}})
	for _, args := range [][]string{
		{"worker", "ping", "--json"},
		{"worker", "stats"},
		{"worker", "revoke", "--task", "0123456789abcdef0123456789abcdef"},
	} {
		code, _, errOut := e.run(args...)
		if code != 70 || !strings.Contains(errOut, "stem: worker sick replied with an error: disk full\n") ||
			!strings.HasSuffix(errOut, "stem: 1 worker(s) replied with an error\n") {
			t.Errorf("%q: exit %d, want 70 naming worker sick and its error\nstderr:\n%s", args, code, errOut)
		}
	}
}
