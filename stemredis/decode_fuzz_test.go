package stemredis

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/stem-go/stem/stemtype"
)

// A queue entry becomes a delivery that keeps its bytes and either holds
// a valid envelope or says, naming the entry and the queue, why it does
// not (the core then dead-letters it: nothing is lost, nothing runs).
func FuzzDecodeDelivery(f *testing.F) {
	env := stemtype.Envelope{ID: "0a1b2c3d", Task: "mail.send", Queue: "default", Args: []byte(`{"to":"x"}`), Attempt: 1}
	own, err := env.AppendJSON(nil)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{string(own), `{}`, `{"id":"a","task":"t","queue":"q","attempt":-1}`, `not json`, ``, `{"id":"a"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		d := decodeDelivery("q1", "1-0", raw)
		if !bytes.Equal(d.Raw, raw) || d.Queue != "q1" || d.Receipt != "1-0" {
			t.Fatalf("%q: delivery %+v lost its bytes or its place", raw, d)
		}
		switch {
		case d.DecodeErr != nil:
			if d.Envelope != nil || !strings.Contains(d.DecodeErr.Error(), `1-0 in queue "q1"`) {
				t.Fatalf("%q: %+v: want no envelope and an error naming the entry", raw, d)
			}
		case d.Envelope == nil:
			t.Fatalf("%q: neither an envelope nor an error", raw)
		default:
			if err := d.Envelope.Validate(); err != nil {
				t.Fatalf("%q: invalid envelope delivered: %v", raw, err)
			}
		}
	})
}

// A stored revoke record decodes, or is skipped with a warning naming its
// task: a value another program wrote never fails a listing.
func FuzzRevokeDecode(f *testing.F) {
	f.Add(`{"namespace":"ns","taskId":"t1","version":3,"issuedAt":"2026-11-30T12:00:00Z","terminate":true}`)
	f.Add(`{"version":"3"}`)
	f.Add("\xff")
	var logs bytes.Buffer
	s := &Revokes{conn: conn{log: slog.New(slog.NewTextHandler(&logs, nil))}}
	f.Fuzz(func(t *testing.T, raw string) {
		logs.Reset()
		r, ok := s.decode(context.Background(), "ns", "task-7", raw)
		if !ok {
			if !strings.Contains(logs.String(), "skipping undecodable record") || !strings.Contains(logs.String(), "task-7") {
				t.Fatalf("%q skipped without a warning naming it: %s", raw, logs.String())
			}
			return
		}
		if logs.Len() != 0 {
			t.Fatalf("%q decoded to %+v and warned: %s", raw, r, logs.String())
		}
	})
}
