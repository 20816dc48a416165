package stemdriver_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// PrepareAnnounce completes what every transport stores alike (the SQLite
// transport once stored a zero LastSeen and an empty Namespace where the
// others filled them in) and refuses what no transport can store.
func TestPrepareAnnounce(t *testing.T) {
	info, raw, err := stemdriver.PrepareAnnounce(stemtype.WorkerInfo{ID: "w1", Instance: "i"}, time.Second, "ns")
	if err != nil {
		t.Fatal(err)
	}
	var stored stemtype.WorkerInfo
	if err := json.Unmarshal(raw, &stored); err != nil {
		t.Fatal(err)
	}
	for _, got := range []stemtype.WorkerInfo{info, stored} {
		if got.Namespace != "ns" || got.LastSeen.IsZero() || got.ID != "w1" || got.Instance != "i" {
			t.Errorf("prepared %+v, want namespace ns and a LastSeen", got)
		}
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	info, _, err = stemdriver.PrepareAnnounce(stemtype.WorkerInfo{ID: "w1", Namespace: "own", LastSeen: at}, time.Second, "ns")
	if err != nil || info.Namespace != "own" || !info.LastSeen.Equal(at) {
		t.Errorf("prepared %+v (%v), want the given namespace and LastSeen kept", info, err)
	}
	for _, tc := range []struct {
		info stemtype.WorkerInfo
		ttl  time.Duration
		say  string
	}{
		{stemtype.WorkerInfo{}, time.Second, "no id"},
		{stemtype.WorkerInfo{ID: "w1"}, 0, "ttl"},
		{stemtype.WorkerInfo{ID: "w1"}, -time.Second, "ttl"},
	} {
		if _, _, err := stemdriver.PrepareAnnounce(tc.info, tc.ttl, "ns"); err == nil || !strings.Contains(err.Error(), tc.say) {
			t.Errorf("PrepareAnnounce(%+v, %v) = %v, want an error saying %q", tc.info, tc.ttl, err, tc.say)
		}
	}
}

// EncodeEnvelopes refuses an invalid envelope, naming nothing stored, and
// encodes valid ones as the JSON a broker's Delivery decodes.
func TestEncodeEnvelopes(t *testing.T) {
	good := &stemtype.Envelope{ID: "t1", Task: "x", Queue: "default", Args: json.RawMessage(`{}`)}
	raws, err := stemdriver.EncodeEnvelopes([]*stemtype.Envelope{good})
	if err != nil {
		t.Fatal(err)
	}
	var back stemtype.Envelope
	if err := json.Unmarshal(raws[0], &back); err != nil || back.ID != "t1" || back.Task != "x" {
		t.Fatalf("decoded %+v (%v)", back, err)
	}
	if _, err := stemdriver.EncodeEnvelopes([]*stemtype.Envelope{good, {ID: "t2"}}); err == nil {
		t.Error("an envelope without a task was encoded")
	}
}
