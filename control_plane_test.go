package stem_test

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"testing"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemtype"
)

// The part of Inspect's contract that only a raw command reaches (the
// typed methods cover the rest in internal/systemtest): a command with no
// payload, as an older controller sends it, gets no revoke list but the
// total, and a negative limit the typed method refuses gets an error reply.
func TestInspectRawPayloads(t *testing.T) {
	e := newEnv(t)
	e.startWorker(stem.WorkerConfig{ID: "w1"})
	ctx := context.Background()
	target := stem.Target{Workers: []string{"w1"}}
	for _, id := range []string{"r1", "r2", "r3", "r4", "r5"} {
		if _, err := e.controller().Revoke(ctx, target, stem.RevokeOptions{TaskIDs: []string{id}}); err != nil {
			t.Fatal(err)
		}
	}
	// A command with no payload, as an older controller sends it.
	raw, err := stem.ControllerSend(e.controller(), ctx, target, stemtype.CommandInspect, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw.Replies) != 1 || raw.Replies[0].Status != stemtype.ReplyOK {
		t.Fatalf("want one ok reply, got %+v", raw)
	}
	var p stemtype.InspectReply
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw.Replies[0].Payload, &p); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw.Replies[0].Payload, &keys); err != nil {
		t.Fatal(err)
	}
	if _, ok := keys["revoked"]; ok || p.RevokedTotal != 5 {
		t.Errorf("inspect without payload: keys %v, total %d; want no revoked list and total 5",
			slices.Sorted(maps.Keys(keys)), p.RevokedTotal)
	}
	r, err := stem.ControllerSend(e.controller(), ctx, target, stemtype.CommandInspect,
		stemtype.InspectRequest{IncludeRevoked: true, Limit: -1})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Replies) != 1 || r.Replies[0].Status != stemtype.ReplyError {
		t.Errorf("negative limit: want an error reply, got %+v", r)
	}
}
