package systemtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemtype"
)

// The fault matrix row "malformed or replayed control commands": hostile
// commands sent through the backend's real control bus get an error reply
// (or, naming no request id, a drop and a log line); the worker keeps
// serving: after each, its next ping is answered, and at the end it still
// runs a task and its Run returns no error (a panic in any of its
// goroutines would have ended the test binary).
//
// Unsigned (no signing key), a replayed command (the same bytes, the same
// requestId) is answered again: the worker keeps no memory of request ids,
// as Celery's workers keep none. That is harmless for what a replay can do
// within one run: a revoke or a pause is a versioned record, so applying
// it again changes nothing; a shutdown replayed to a worker that is
// already stopping is moot. A shutdown captured and replayed to a worker
// that restarted since would stop it again: only signed commands, with an
// issue time checked against a replay window, tell that copy from a new
// command (the signing cases cover them), so this case does not.
func testHostileControlCommandsAnsweredWorkerKeepsServing(t *testing.T, h Harness) {
	d := open(t, h)
	stem.Register(d.reg, "echo", func(*stem.TaskContext, stem.Args) (any, error) { return 1, nil }, stem.TaskOptions{})
	var logs testutil.SyncBuffer
	d.startWorker(stem.WorkerConfig{ID: "w1", Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	ctx := context.Background()
	n := 0
	newID := func() string { n++; return fmt.Sprintf("hostile-%d", n) }

	// send publishes msg as is, to every worker of the namespace.
	send := func(msg []byte) {
		t.Helper()
		if err := d.roles.Control.Publish(ctx, nil, msg); err != nil {
			t.Fatalf("publish %.80q: %v", msg, err)
		}
	}
	// replies returns the replies stored for id once want of them came.
	replies := func(id string, want int) []stemtype.ControlReply {
		t.Helper()
		var out []stemtype.ControlReply
		cctx, cancel := context.WithTimeout(ctx, waitBound)
		defer cancel()
		err := d.roles.Control.Replies(cctx, id, func(b []byte) bool {
			var r stemtype.ControlReply
			if err := json.Unmarshal(b, &r); err != nil {
				t.Errorf("reply to %s does not decode: %v", id, err)
			}
			out = append(out, r)
			return len(out) < want
		})
		if err != nil {
			t.Fatalf("%d of %d replies to %s: %v", len(out), want, id, err)
		}
		return out
	}
	// pingAnswered checks that the worker still answers a ping. Commands
	// are served in order, so everything sent before was served too.
	pingAnswered := func(after string) {
		t.Helper()
		r, err := d.ctl.Ping(ctx, target("w1"))
		if err != nil || len(r.Replies) != 1 || r.Replies[0].Status != stemtype.ReplyOK {
			t.Fatalf("after %s: ping %+v, %v", after, r, err)
		}
	}
	// noReply checks that nothing answered id: the ping after it was
	// served, so a reply would be stored already (the bound only ends
	// the read of what is stored).
	noReply := func(id string) {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		_ = d.roles.Control.Replies(cctx, id, func(b []byte) bool {
			t.Errorf("%s answered: %s", id, b)
			return false
		})
	}
	errorReply := func(name string, msg []byte, id, want string) {
		t.Helper()
		send(msg)
		reps := replies(id, 1)
		if r := reps[0]; r.Status != stemtype.ReplyError || r.WorkerID != "w1" || r.Error == nil || !strings.Contains(r.Error.Message, want) {
			t.Fatalf("%s: reply %+v, want an error saying %q", name, r, want)
		}
		pingAnswered(name)
	}
	cmd := func(id, typ, payload string, extra ...string) []byte {
		s := fmt.Sprintf(`{"requestId":%q,"type":%q`, id, typ)
		if payload != "" {
			s += `,"payload":` + payload
		}
		for _, e := range extra {
			s += "," + e
		}
		return []byte(s + "}")
	}

	// Unknown and missing types.
	id := newID()
	errorReply("unknown type", cmd(id, "reboot", ""), id, `unknown control command type "reboot"`)
	id = newID()
	errorReply("no type", cmd(id, "", ""), id, "no type")
	// Payloads of the wrong JSON shape, for each command that reads one: a
	// shutdown among them, which must not stop the worker.
	for typ, payload := range map[string]string{
		stemtype.CommandInspect: `[1,2]`, stemtype.CommandRevoke: `{"records":"all"}`, stemtype.CommandShutdown: `{"mode":7}`,
		stemtype.CommandPause: `"default"`, stemtype.CommandResume: `{"record":{"kind":"task","taskId":"x"}}`,
	} {
		id := newID()
		errorReply("wrong shape "+typ, cmd(id, typ, payload), id, "bad "+typ+" payload")
	}
	// A payload that is not JSON makes the whole message invalid: answered
	// all the same, from the request id read before the break.
	id = newID()
	errorReply("invalid JSON payload", cmd(id, stemtype.CommandInspect, `{includeRevoked: yes}`), id, "malformed control message")
	id = newID()
	errorReply("truncated", []byte(`{"requestId":"`+id+`","type":"inspect","payload":{"limit":`), id, "malformed control message")
	// Negative and huge limits, a timeout past a time.Duration.
	id = newID()
	errorReply("negative limit", cmd(id, stemtype.CommandInspect, `{"includeRevoked":true,"limit":-1}`), id, "negative limit")
	id = newID()
	errorReply("negative scheduledLimit", cmd(id, stemtype.CommandInspect, `{"includeScheduled":true,"scheduledLimit":-3}`), id, "negative scheduledLimit")
	for _, extra := range [][]string{
		{}, {`"timeoutMs":9223372036854775807`}, {`"timeoutMs":-5`}, {`"targets":[]`}, {`"targets":null`},
	} {
		id := newID()
		send(cmd(id, stemtype.CommandInspect, `{"includeRevoked":true,"limit":9223372036854775807,"scheduledLimit":1000000000}`, extra...))
		if r := replies(id, 1)[0]; r.Status != stemtype.ReplyOK {
			t.Fatalf("huge limits %v: %+v", extra, r)
		}
		pingAnswered(fmt.Sprintf("huge limits %v", extra))
	}
	// A huge targets list (about 1 MB): ignored when it does not name the
	// worker, answered when it does.
	many := make([]string, 100_000)
	for i := range many {
		many[i] = fmt.Sprintf("ghost-%d", i)
	}
	tj, _ := json.Marshal(many)
	ignored := newID()
	send(cmd(ignored, stemtype.CommandPing, "", `"targets":`+string(tj)))
	pingAnswered("a huge list of other targets")
	noReply(ignored)
	many[len(many)-1] = "w1"
	tj, _ = json.Marshal(many)
	id = newID()
	send(cmd(id, stemtype.CommandPing, "", `"targets":`+string(tj)))
	if r := replies(id, 1)[0]; r.Status != stemtype.ReplyOK {
		t.Fatalf("huge targets naming w1: %+v", r)
	}
	pingAnswered("a huge list of targets naming the worker")
	// Garbage that names no request id: dropped, and logged.
	for _, g := range ControlGarbage() {
		before := logs.String()
		send(g.Raw)
		pingAnswered(g.Name)
		got := strings.TrimPrefix(logs.String(), before)
		for _, want := range g.Logs {
			if !strings.Contains(got, want) {
				t.Errorf("%s: the worker logged %q, want a line saying %q", g.Name, got, want)
			}
		}
	}

	// A replayed revoke: answered each time, applied once.
	rec := stemtype.RevokeRecord{Namespace: d.ns, TaskID: "replayed-task", Version: 41, IssuedAt: time.Now().UTC(), Terminate: true}
	payload, _ := json.Marshal(stemtype.RevokeRequest{Records: []stemtype.RevokeRecord{rec}})
	id = newID()
	revoke := cmd(id, stemtype.CommandRevoke, string(payload))
	send(revoke)
	send(revoke)
	for i, r := range replies(id, 2) {
		var p stemtype.RevokeReply
		if r.Status != stemtype.ReplyOK || json.Unmarshal(r.Payload, &p) != nil || len(p.Tasks) != 1 || p.Tasks[0] != rec.TaskID {
			t.Fatalf("replayed revoke, reply %d: %+v (%s)", i, r, r.Payload)
		}
	}
	ins, err := d.ctl.Inspect(ctx, target("w1"), stemtype.InspectRequest{IncludeRevoked: true})
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := inspectOf(t, ins); p.RevokedTotal != 1 || len(p.Revoked) != 1 || p.Revoked[0].Version != rec.Version {
		t.Fatalf("after a replayed revoke the worker holds %+v, want the one record", p.Revoked)
	}
	// A replayed shutdown-looking command (an unknown mode): an error reply
	// to each copy, and the worker keeps serving.
	id = newID()
	shutdown := cmd(id, stemtype.CommandShutdown, `{"mode":"now"}`)
	send(shutdown)
	send(shutdown)
	for i, r := range replies(id, 2) {
		if r.Status != stemtype.ReplyError || r.Error == nil || !strings.Contains(r.Error.Message, `unknown mode "now"`) {
			t.Fatalf("replayed bad shutdown, reply %d: %+v", i, r)
		}
	}
	pingAnswered("a replayed bad shutdown")

	if res := d.wait(d.enqueue("echo", stem.EnqueueOptions{})); res.State != stemtype.StateSucceeded {
		t.Fatalf("the worker no longer runs tasks: %+v", res)
	}
}

// Garbage is a control message that is not a command, written to a
// backend's control channel: ControlGarbage's cases, which every backend's
// raw-bytes test writes where only its own code writes, and the hostile
// command case sends through the transport.
type Garbage struct {
	Name string
	Raw  []byte
	// Logs are what the logs say once it was read: each must appear.
	Logs []string
}

// ControlGarbage returns messages that are not commands: not JSON,
// truncated JSON, JSON of the wrong type, and a megabyte of junk.
func ControlGarbage() []Garbage {
	g := func(name string, raw []byte, reason string) Garbage {
		return Garbage{name, raw, []string{"malformed control message", reason}}
	}
	return []Garbage{
		g("not JSON", []byte("\x00\xffnot json at all"), "invalid character"),
		g("truncated JSON", []byte(`{"type":"ping","targets":["*"`), "unexpected end of JSON input"),
		g("JSON of the wrong type", []byte(`[{"requestId":"x"}]`), "cannot unmarshal array"),
		g("a field of the wrong type", []byte(`{"type":["ping"]}`), "cannot unmarshal array"),
		g("empty", []byte{}, "unexpected end of JSON input"),
		g("1 MB of junk", bytes.Repeat([]byte("junk\x01"), 1<<20/5), "bytes=1048575"),
	}
}

// CheckRawControlGarbage is the raw-bytes half of the malformed command
// row, for a backend's own tests: it runs worker "w1" of namespace ns over
// r, logging to logs (open r's drivers with a logger writing there too),
// and for each case has inject write c.Raw where only the backend's own
// code writes (a PUBLISH on the channel, a NOTIFY, a row), then checks
// that a ping to the worker is answered and that the logs name the
// problem (they hold c.Logs once the ping was answered: messages are
// served in order). At the end the worker still runs a task.
func CheckRawControlGarbage(t *testing.T, ns string, r Roles, logs *testutil.SyncBuffer, inject func(raw []byte) error, cases []Garbage) {
	t.Helper()
	d := openWith(t, func(*testing.T, string) Roles { return r }, ns)
	stem.Register(d.reg, "echo", func(*stem.TaskContext, stem.Args) (any, error) { return 1, nil }, stem.TaskOptions{})
	d.startWorker(stem.WorkerConfig{ID: "w1", Logger: slog.New(slog.NewTextHandler(logs, nil))})
	ctx := context.Background()
	for _, c := range cases {
		before := len(logs.String())
		if err := inject(c.Raw); err != nil {
			t.Fatalf("%s: write: %v", c.Name, err)
		}
		p, err := d.ctl.Ping(ctx, target("w1"))
		if err != nil || len(p.Replies) != 1 || p.Replies[0].Status != stemtype.ReplyOK {
			t.Fatalf("%s: ping %+v, %v", c.Name, p, err)
		}
		got := logs.String()[before:]
		for _, want := range c.Logs {
			if !strings.Contains(got, want) {
				t.Errorf("%s: logged %q, want a line saying %q", c.Name, got, want)
			}
		}
	}
	if res := d.wait(d.enqueue("echo", stem.EnqueueOptions{})); res.State != stemtype.StateSucceeded {
		t.Fatalf("the worker no longer runs tasks: %+v", res)
	}
}
