package stemtype_test

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// roundTrip decodes raw as a T and, when it decodes, checks that what was
// read encodes, decodes again and encodes to the same bytes: nothing a
// worker or controller read is lost or changed by passing it on. It
// returns the value read and whether raw decoded.
func roundTrip[T any](t *testing.T, raw []byte) (T, bool) {
	t.Helper()
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		if err.Error() == "" {
			t.Fatalf("%q: an empty error", raw)
		}
		return v, false
	}
	enc, err := json.Marshal(v)
	if err != nil {
		// Only a time outside years 0-9999 decodes and does not encode.
		if !strings.Contains(err.Error(), "year outside of range") {
			t.Fatalf("%q decodes to %+v, which does not encode: %v", raw, v, err)
		}
		return v, true
	}
	var again T
	if err := json.Unmarshal(enc, &again); err != nil {
		t.Fatalf("%q: its encoding %s does not decode: %v", raw, enc, err)
	}
	enc2, err := json.Marshal(again)
	if err != nil || !bytes.Equal(enc, enc2) {
		t.Fatalf("%q: encodes to %s, then to %s (%v)", raw, enc, enc2, err)
	}
	return v, true
}

// seedsOf adds the JSON encodings of vs, as stem's own code writes them,
// and raw strings to f.
func seedsOf(f *testing.F, vs []any, raw ...string) {
	for _, v := range vs {
		b, err := json.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range raw {
		f.Add([]byte(s))
	}
}

var fuzzNow = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func sampleRecords() []stemtype.RevokeRecord {
	return []stemtype.RevokeRecord{
		{Namespace: "ns", TaskID: "t1", Version: 1, IssuedAt: fuzzNow, Terminate: true, KillAfterMs: 500, Reason: "r", RequestedBy: "me"},
		{Namespace: "ns", TaskID: stemtype.NameRevokeKey("mail.send"), Kind: stemtype.RevokeKindName, Name: "mail.send", Version: 7,
			IssuedAt: fuzzNow, ExpiresAt: fuzzNow.Add(time.Hour)},
		{Namespace: "ns", TaskID: stemtype.QueuePauseKey("q"), Kind: stemtype.RevokeKindQueuePause, Queue: "q", Resumed: true, Version: 9, IssuedAt: fuzzNow},
	}
}

// A control command, as a worker reads it off the bus, survives a round
// trip, and Broadcast says what its targets say.
func FuzzControlCommand(f *testing.F) {
	recs, _ := json.Marshal(stemtype.RevokeRequest{Records: sampleRecords()})
	seedsOf(f, []any{
		stemtype.ControlCommand{RequestID: "r1", Type: stemtype.CommandPing, Targets: []string{stemtype.BroadcastTarget}, TimeoutMs: 5000, Version: 1},
		stemtype.ControlCommand{RequestID: "r2", Type: stemtype.CommandRevoke, Targets: []string{"w1", "w2"}, Payload: recs, Version: 1},
	}, `{"requestId":"r","type":"ping","targets":null}`, `{"requestId":"r","targets":["*","w"],"payload":{"a":[1,{}]}}`,
		`{"requestId":1}`, `{"payload":}`, `{"timeoutMs":1e400}`, `{"requestId":"\ud800"}`)
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, ok := roundTrip[stemtype.ControlCommand](t, raw)
		if !ok {
			return
		}
		want := len(c.Targets) == 0 || slices.Contains(c.Targets, stemtype.BroadcastTarget)
		if c.Broadcast() != want {
			t.Fatalf("%q: Broadcast() = %v with targets %q", raw, c.Broadcast(), c.Targets)
		}
		if c.Payload != nil && !json.Valid(c.Payload) {
			t.Fatalf("%q: payload %q is not JSON", raw, c.Payload)
		}
	})
}

// A control reply, as a controller reads it, survives a round trip.
func FuzzControlReply(f *testing.F) {
	seedsOf(f, []any{
		stemtype.ControlReply{RequestID: "r1", WorkerID: "w1", Status: stemtype.ReplyOK, Payload: json.RawMessage(`{"timestamp":"2026-11-30T12:00:00Z"}`)},
		stemtype.ControlReply{RequestID: "r1", WorkerID: "w1", Status: stemtype.ReplyError, Error: &stemtype.ControlError{Message: "boom"}},
	}, `{"status":"ok","error":null}`, `{"error":{"message":7}}`, `{"payload":"x"`)
	f.Fuzz(func(t *testing.T, raw []byte) { roundTrip[stemtype.ControlReply](t, raw) })
}

// The payloads of the commands a worker decodes (the first byte picks the
// type) survive a round trip; every revoke record they carry either
// validates, and then validates again after the trip, or fails with an
// error that names the record.
func FuzzControlPayloads(f *testing.F) {
	recs := sampleRecords()
	for i, v := range []any{
		stemtype.InspectRequest{IncludeRevoked: true, Limit: 10, IncludeReserved: true, IncludeScheduled: true, ScheduledLimit: 3},
		stemtype.RevokeRequest{Records: recs},
		stemtype.ShutdownRequest{Mode: stemtype.ShutdownHard},
		stemtype.QueuePauseRequest{Record: recs[2]},
	} {
		b, _ := json.Marshal(v)
		f.Add(byte(i), b)
	}
	f.Add(byte(0), []byte(`{"limit":-1,"scheduledLimit":99999999999999999999}`))
	f.Add(byte(1), []byte(`{"records":[{"namespace":"ns","taskId":"\u001fname","version":1}]}`))
	f.Add(byte(2), []byte(`{"mode":["hard"]}`))
	f.Add(byte(3), []byte(`{"record":{"kind":"queue-pause","version":-1}}`))
	f.Fuzz(func(t *testing.T, which byte, raw []byte) {
		var got []stemtype.RevokeRecord
		switch which % 4 {
		case 0:
			roundTrip[stemtype.InspectRequest](t, raw)
		case 1:
			r, _ := roundTrip[stemtype.RevokeRequest](t, raw)
			got = r.Records
		case 2:
			roundTrip[stemtype.ShutdownRequest](t, raw)
		case 3:
			r, _ := roundTrip[stemtype.QueuePauseRequest](t, raw)
			got = []stemtype.RevokeRecord{r.Record}
		}
		for _, rec := range got {
			checkRecord(t, rec)
		}
	})
}

// checkRecord checks Validate on rec: an error starts with "stem:" and says
// what is wrong with which record; a valid record is valid again once
// encoded and decoded.
func checkRecord(t *testing.T, rec stemtype.RevokeRecord) {
	t.Helper()
	err := rec.Validate()
	if err != nil {
		msg := err.Error()
		if !strings.HasPrefix(msg, "stem: ") || !(strings.Contains(msg, "record") || strings.Contains(msg, "task id")) {
			t.Fatalf("%+v: error %q does not say which record is wrong", rec, msg)
		}
		return
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return // a time outside years 0-9999 (roundTrip allows it)
	}
	var again stemtype.RevokeRecord
	if err := json.Unmarshal(b, &again); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if err := again.Validate(); err != nil || again.Version != rec.Version || again.TaskID != rec.TaskID ||
		again.Kind != rec.Kind || again.Target() != rec.Target() {
		t.Fatalf("valid %+v reads back as %+v (%v)", rec, again, err)
	}
}

// A revoke record, as a store or a command hands it to a worker, survives
// a round trip and is valid or refused with an error naming it.
func FuzzRevokeRecord(f *testing.F) {
	var vs []any
	for _, r := range sampleRecords() {
		vs = append(vs, r)
	}
	seedsOf(f, vs, `{"namespace":"ns","taskId":"x","version":0}`, `{"namespace":"ns","taskId":"x","version":1,"kind":"other"}`,
		`{"namespace":"ns","taskId":"x","version":1,"killAfterMs":-1}`, `{"issuedAt":"10000-01-01T00:00:00Z"}`,
		`{"namespace":"ns","taskId":"x","version":1,"expiresAt":"2026-11-30T12:00:00+14:00"}`)
	f.Fuzz(func(t *testing.T, raw []byte) {
		if rec, ok := roundTrip[stemtype.RevokeRecord](t, raw); ok {
			checkRecord(t, rec)
		}
	})
}
