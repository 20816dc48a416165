package stem

import (
	"encoding/json"
	"testing"

	"github.com/stem-go/stem/stemtype"
)

// TestDecodeReplies checks that Decode turns a worker's error, a missing
// payload and a payload that does not decode into that worker's Err,
// never a silently zero payload.
func TestDecodeReplies(t *testing.T) {
	r := &Replies{Replies: []stemtype.ControlReply{
		{WorkerID: "w1", Status: stemtype.ReplyOK, Payload: json.RawMessage(`{"host":"h1","pid":7}`)},
		{WorkerID: "w2", Status: stemtype.ReplyOK, Payload: json.RawMessage(`{"pid":"not a number"}`)},
		{WorkerID: "w3", Status: stemtype.ReplyOK},
		{WorkerID: "w4", Status: stemtype.ReplyError, Error: &stemtype.ControlError{Message: "boom"}},
		{WorkerID: "w5", Status: stemtype.ReplyError},
	}}
	got := Decode[stemtype.StatsReply](r)
	if len(got) != 5 {
		t.Fatalf("got %d replies, want 5", len(got))
	}
	if g := got[0]; g.Err != nil || g.Status != stemtype.ReplyOK || g.Payload.Host != "h1" || g.Payload.PID != 7 {
		t.Errorf("w1: %+v", g)
	}
	for _, g := range got[1:3] {
		if g.Err == nil || g.Status != stemtype.ReplyError || g.Payload.PID != 0 {
			t.Errorf("%s: a bad or missing payload must be an error, got %+v", g.WorkerID, g)
		}
	}
	if g := got[3]; g.Err == nil || g.Err.Error() != "boom" || g.Status != stemtype.ReplyError {
		t.Errorf("w4: %+v", g)
	}
	if g := got[4]; g.Err == nil || g.Err.Error() != "error" {
		t.Errorf("w5: %+v", g)
	}
	if Decode[stemtype.PingReply](nil) != nil {
		t.Error("Decode(nil) is not nil")
	}
}
