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

// TestRenderInspectRevokesByNameAndPauses: the revoked table names a
// revoke by name and a queue pause by what they apply to, never by their
// store key (which starts with a control character).
func TestRenderInspectRevokesByNameAndPauses(t *testing.T) {
	recs := []stemtype.RevokeRecord{
		{Namespace: "ns", TaskID: stemtype.NameRevokeKey("email.send"), Kind: stemtype.RevokeKindName, Name: "email.send", Version: 3},
		{Namespace: "ns", TaskID: stemtype.QueuePauseKey("mail"), Kind: stemtype.RevokeKindQueuePause, Queue: "mail", Version: 2},
		{Namespace: "ns", TaskID: stemtype.QueuePauseKey("bulk"), Kind: stemtype.RevokeKindQueuePause, Queue: "bulk", Resumed: true, Version: 1},
	}
	payload, err := json.Marshal(stemtype.InspectReply{Active: []stemtype.ActiveTask{}, Revoked: recs, RevokedTotal: 3})
	if err != nil {
		t.Fatal(err)
	}
	r := &stem.Replies{Replies: []stemtype.ControlReply{{WorkerID: "w1", Status: stemtype.ReplyOK, Payload: payload}}}
	var b bytes.Buffer
	renderInspect(&b, r, stemtype.InspectRequest{IncludeRevoked: true})
	out := b.String()
	for _, want := range []string{"name email.send", "queue mail", "queue bulk (resumed)"} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, stemtype.RevokeKeyPrefix) {
		t.Errorf("inspect output shows a store key:\n%q", out)
	}
}
