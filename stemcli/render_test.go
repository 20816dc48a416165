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
