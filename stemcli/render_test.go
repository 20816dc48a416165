package stemcli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// TestRenderStatsBadPayload checks that a stats reply whose payload does
// not decode is shown as that worker's error, not as a row of zeros (the
// decode error used to be ignored).
func TestRenderStatsBadPayload(t *testing.T) {
	r := &stem.Replies{Replies: []stemtype.ControlReply{
		{WorkerID: "w1", Status: stemtype.ReplyOK, Payload: json.RawMessage(`{"pid":"not a number"}`)},
	}}
	var b bytes.Buffer
	renderStats(&b, r)
	out := b.String()
	if !strings.Contains(out, "error: stem: worker w1: decode reply payload") {
		t.Fatalf("bad payload not reported as an error:\n%s", out)
	}
}

// TestRenderInspectReserved checks the --reserved table: each waiting
// task with how long it waited, the count on the worker's line, and a
// worker that does not report reserved tasks (an older one) said so
// rather than shown with none.
func TestRenderInspectReserved(t *testing.T) {
	r := &stem.Replies{Replies: []stemtype.ControlReply{
		{WorkerID: "w1", Status: stemtype.ReplyOK, Payload: json.RawMessage(`{"inflight":0,"active":[],"revokedTotal":0,` +
			`"reserved":[{"id":"t1","task":"demo.sleep","queue":"default","attempt":2,"claimedAt":"2026-11-30T06:00:00Z","waitedMs":1500}]}`)},
		{WorkerID: "w2", Status: stemtype.ReplyOK, Payload: json.RawMessage(`{"inflight":0,"active":[],"revokedTotal":0}`)},
	}}
	var b bytes.Buffer
	renderInspect(&b, r, stemtype.InspectRequest{IncludeReserved: true})
	want := "worker w1: 0 in flight, 0 revoked, 1 reserved\n" +
		"  RESERVED  TASK        QUEUE    ATTEMPT  WAITED\n" +
		"  t1        demo.sleep  default  2        1.5s\n" +
		"worker w2: 0 in flight, 0 revoked, reserved tasks not reported (an older worker)\n"
	if got := b.String(); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	b.Reset()
	renderInspect(&b, r, stemtype.InspectRequest{})
	if got := b.String(); strings.Contains(got, "reserved") {
		t.Fatalf("reserved shown without --reserved:\n%s", got)
	}
}
