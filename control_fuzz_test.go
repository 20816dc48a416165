package stem

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemtype"
)

// replyRecorder keeps the replies a worker sent, those the transport took
// (a reply sent with an ended context is not one).
type replyRecorder struct {
	stemdriver.ControlTransport
	mu   sync.Mutex
	sent [][]byte
}

func (r *replyRecorder) Reply(ctx context.Context, requestID string, msg []byte) error {
	if err := r.ControlTransport.Reply(ctx, requestID, msg); err != nil {
		return err
	}
	r.mu.Lock()
	r.sent = append(r.sent, append([]byte(nil), msg...))
	r.mu.Unlock()
	return nil
}

func (r *replyRecorder) take() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sent
	r.sent = nil
	return s
}

// fuzzWorker is a worker over an in-memory hub whose control messages the
// fuzz target hands to handleControl, the path every received message
// takes, without Run: stops counts the shutdowns it asked for.
type fuzzWorker struct {
	w     *Worker
	rec   *replyRecorder
	stops int
}

func newFuzzWorker(t testing.TB) *fuzzWorker {
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "fz", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	rec := &replyRecorder{ControlTransport: hub.Control(opts)}
	w, err := NewWorker(WorkerConfig{ID: "w1", Namespace: "fz", Registry: NewRegistry(), Broker: hub.Broker(opts),
		Results: hub.Results(opts), Revokes: hub.Revokes(), Control: rec, Logger: opts.Logger})
	if err != nil {
		t.Fatal(err)
	}
	f := &fuzzWorker{w: w, rec: rec}
	w.stopRun = func(error) { f.stops++ }
	return f
}

// controlSeeds are commands as the Controller sends them (encoded by its
// own code), then hostile variants of them.
func controlSeeds(t testing.TB) [][]byte {
	c := &Controller{}
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	rec := stemtype.RevokeRecord{Namespace: "fz", TaskID: "t1", Kind: stemtype.RevokeKindTask, Version: 1, IssuedAt: now, Terminate: true}
	pause := stemtype.RevokeRecord{Namespace: "fz", TaskID: stemtype.QueuePauseKey("default"), Kind: stemtype.RevokeKindQueuePause,
		Queue: "default", Version: 2, IssuedAt: now}
	var out [][]byte
	for _, p := range []struct {
		typ     string
		payload any
	}{
		{stemtype.CommandPing, nil},
		{stemtype.CommandStats, nil},
		{stemtype.CommandInspect, stemtype.InspectRequest{IncludeRevoked: true, Limit: 3, IncludeReserved: true}},
		{stemtype.CommandRevoke, stemtype.RevokeRequest{Records: []stemtype.RevokeRecord{rec}}},
		{stemtype.CommandShutdown, stemtype.ShutdownRequest{Mode: stemtype.ShutdownSoft}},
		{stemtype.CommandPause, stemtype.QueuePauseRequest{Record: pause}},
	} {
		o, err := c.prepare(Target{Workers: []string{"w1"}}, p.typ, p.payload)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, o.msg)
	}
	for _, s := range []string{
		`{"requestId":"r1","type":"reboot"}`,
		`{"requestId":"r2","type":"inspect","payload":[1,2]}`,
		`{"requestId":"r3","type":"inspect","payload":{"limit":-1,"includeRevoked":true}}`,
		`{"requestId":"r4","type":"inspect","payload":{"scheduledLimit":-5}}`,
		`{"requestId":"r5","type":"inspect","payload":{"limit":9223372036854775807,"includeRevoked":true}}`,
		`{"requestId":"r6","type":"revoke","payload":{"records":"all"}}`,
		`{"requestId":"r7","type":"revoke","payload":{"records":[{"taskId":"x"}]}}`,
		`{"requestId":"r8","type":"shutdown","payload":{"mode":"gentle"}}`,
		`{"requestId":"r9","type":"shutdown","payload":"warm"}`,
		`{"requestId":"r10","type":"pause","payload":{"record":{"kind":"task"}}}`,
		`{"requestId":"r11","type":"ping","timeoutMs":9223372036854775807}`,
		`{"requestId":"r12","type":"ping","timeoutMs":-1,"targets":[]}`,
		`{"requestId":"r13","type":"ping","targets":["w2","w3"]}`,
		`{"requestId":"r14","type":"ping","targets":"w1"}`,
		`{"requestId":"","type":"ping"}`,
		`{"requestId":"r15","type":""}`,
		`{"requestId":"r16","type":"inspect","payload":{bad}}`,
		`{"requestId":"r17","type":"resume","payload":null}`,
		`[1,2,3]`, `"ping"`, `null`, `{"requestId":`, "\x00\xff",
	} {
		out = append(out, []byte(s))
	}
	return out
}

// replyTypes are the payload types of each command's ok reply.
var replyTypes = map[string]func() any{
	stemtype.CommandPing:     func() any { return &stemtype.PingReply{} },
	stemtype.CommandInspect:  func() any { return &stemtype.InspectReply{} },
	stemtype.CommandStats:    func() any { return &stemtype.StatsReply{} },
	stemtype.CommandRevoke:   func() any { return &stemtype.RevokeReply{} },
	stemtype.CommandShutdown: func() any { return &stemtype.ShutdownReply{} },
	stemtype.CommandPause:    func() any { return &stemtype.QueuePauseReply{} },
	stemtype.CommandResume:   func() any { return &stemtype.QueuePauseReply{} },
}

// checkControl hands msg to the worker as its subscription would and
// checks what it did: a command it can read and that is addressed to it
// is answered once, ok with the payload of its type or with an error that
// says why; a message that does not decode is answered with an error when
// it names a request id, and dropped otherwise; only a valid shutdown
// stops the worker.
func (f *fuzzWorker) checkControl(t *testing.T, msg []byte) {
	t.Helper()
	stops := f.stops
	start := time.Now()
	f.w.handleControl(context.Background(), msg)
	elapsed := time.Since(start)
	sent := f.rec.take()

	var cmd stemtype.ControlCommand
	decodeErr := json.Unmarshal(msg, &cmd)
	if decodeErr != nil {
		cmd = malformedHead(msg)
	}
	answered := cmd.RequestID != "" && (cmd.Broadcast() || slices.Contains(cmd.Targets, "w1"))
	requestID := cmd.RequestID
	if !answered {
		if len(sent) != 0 || f.stops != stops {
			t.Fatalf("%q: not for the worker, yet %d replies, %d stops", msg, len(sent), f.stops-stops)
		}
		return
	}
	if len(sent) == 0 && cmd.TimeoutMs > 0 && cmd.TimeoutMs <= 60000 && elapsed >= time.Duration(cmd.TimeoutMs)*time.Millisecond {
		return // the controller's wait was over before the reply was ready: none is sent
	}
	if len(sent) != 1 {
		t.Fatalf("%q: %d replies, want 1", msg, len(sent))
	}
	var rep stemtype.ControlReply
	if err := json.Unmarshal(sent[0], &rep); err != nil {
		t.Fatalf("%q: reply %q does not decode: %v", msg, sent[0], err)
	}
	if rep.RequestID != requestID || rep.WorkerID != "w1" {
		t.Fatalf("%q: reply %+v names the wrong request or worker", msg, rep)
	}
	switch rep.Status {
	case stemtype.ReplyError:
		if rep.Error == nil || rep.Error.Message == "" || rep.Payload != nil {
			t.Fatalf("%q: error reply %+v without a message", msg, rep)
		}
		if decodeErr != nil && !strings.HasPrefix(rep.Error.Message, "malformed control message") {
			t.Fatalf("%q: error %q does not say the message is malformed", msg, rep.Error.Message)
		}
		if _, known := replyTypes[cmd.Type]; decodeErr == nil && !known && !strings.Contains(rep.Error.Message, "type") {
			t.Fatalf("%q: error %q does not name the unknown type", msg, rep.Error.Message)
		}
		if f.stops != stops {
			t.Fatalf("%q: an error reply, yet the worker stops", msg)
		}
	case stemtype.ReplyOK:
		mk, known := replyTypes[cmd.Type]
		if decodeErr != nil || !known || rep.Error != nil {
			t.Fatalf("%q: ok reply %+v to a command that is not one", msg, rep)
		}
		p := mk()
		dec := json.NewDecoder(strings.NewReader(string(rep.Payload)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(p); err != nil {
			t.Fatalf("%q: ok payload %s is not a %T: %v", msg, rep.Payload, p, err)
		}
		if want := cmd.Type == stemtype.CommandShutdown; (f.stops != stops) != want {
			t.Fatalf("%q: ok reply, worker stopped %v, want %v", msg, f.stops != stops, want)
		}
	default:
		t.Fatalf("%q: reply status %q", msg, rep.Status)
	}
	// The controller reads the reply as the worker meant it.
	got := decodeReply[json.RawMessage](rep)
	if (got.Err == nil) != (rep.Status == stemtype.ReplyOK) {
		t.Fatalf("%q: controller reads %+v from %+v", msg, got, rep)
	}
}

// FuzzHandleControl feeds arbitrary control messages to a worker's
// control path (decode, addressing, each command's payload decoder, the
// reply) and checks checkControl's properties for each.
func FuzzHandleControl(f *testing.F) {
	for _, s := range controlSeeds(f) {
		f.Add(s)
	}
	fw := newFuzzWorker(f)
	f.Fuzz(func(t *testing.T, msg []byte) { fw.checkControl(t, msg) })
}

// A command with a timeout too large for a time.Duration is answered: it
// once overflowed to a deadline in the past, and the reply went out with an
// ended context, i.e. never.
func TestControlHugeTimeoutAnswered(t *testing.T) {
	fw := newFuzzWorker(t)
	for _, ms := range []int64{math.MaxInt64, math.MaxInt64 / 1000, 1 << 53} {
		fw.checkControl(t, fmt.Appendf(nil, `{"requestId":"r","type":"ping","timeoutMs":%d}`, ms))
	}
}

// A message that does not decode is answered when it names a request id
// before it breaks, by the workers it addresses only.
func TestMalformedHead(t *testing.T) {
	for msg, want := range map[string]string{
		`{"requestId":"r1","type":"inspect","payload":{bad}}`:                 "r1 []",
		`{"requestId":"r2","targets":["w2"],"payload":`:                       "r2 [w2]",
		`{"type":"x","targets":"w1","requestId":"r3","timeoutMs":"soon"}`:     "r3 []",
		`{"requestId":7,"payload":{"a":[1,2,{"requestId":"inner"}]},"x":tru}`: " []",
		`{"payload":{"requestId":"inner"}}`:                                   " []",
		`["requestId","r4"]`:                                                  " []",
		`{"requestId":"r5"`:                                                   "r5 []",
	} {
		h := malformedHead([]byte(msg))
		if got := fmt.Sprintf("%s %v", h.RequestID, h.Targets); got != want {
			t.Errorf("malformedHead(%s) = %q, want %q", msg, got, want)
		}
	}
	fw := newFuzzWorker(t)
	for _, msg := range []string{`{"requestId":"r1","type":"inspect","payload":{bad}}`, `{"requestId":"r2","targets":["w2"],"payload":`} {
		fw.checkControl(t, []byte(msg))
	}
}

// Every hostile seed gets checkControl's answer, and a ping after each is
// still answered ok.
func TestControlSeedsThenPing(t *testing.T) {
	fw := newFuzzWorker(t)
	for _, s := range controlSeeds(t) {
		fw.checkControl(t, s)
		fw.w.handleControl(context.Background(), []byte(`{"requestId":"p","type":"ping"}`))
		sent := fw.rec.take()
		var rep stemtype.ControlReply
		if len(sent) != 1 || json.Unmarshal(sent[0], &rep) != nil || rep.Status != stemtype.ReplyOK {
			t.Fatalf("after %q: ping answered %q", s, sent)
		}
	}
}
