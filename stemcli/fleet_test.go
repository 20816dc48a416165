package stemcli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// A worker is late once its last heartbeat is older than two of its own
// intervals (the default interval for a worker that announces none), and
// the table says so.
func TestFleetStatusMarksLateWorkers(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	ws := []stemtype.WorkerInfo{
		{ID: "b-fresh", LastSeen: now.Add(-999 * time.Millisecond), IntervalMs: 500},
		{ID: "a-late", LastSeen: now.Add(-1001 * time.Millisecond), IntervalMs: 500},
		{ID: "c-old-worker", LastSeen: now.Add(-11 * time.Second)},
		{ID: "d-old-worker-fresh", LastSeen: now.Add(-9 * time.Second)},
		{ID: "e-future", LastSeen: now.Add(time.Second), IntervalMs: 500}, // a clock ahead of ours
	}
	rows := fleetStatus(ws, now)
	want := map[string]bool{"a-late": true, "b-fresh": false, "c-old-worker": true, "d-old-worker-fresh": false, "e-future": false}
	if len(rows) != len(want) {
		t.Fatalf("got %d rows, want %d", len(rows), len(want))
	}
	for i, r := range rows {
		if i > 0 && rows[i-1].ID > r.ID {
			t.Errorf("rows not sorted by id: %s before %s", rows[i-1].ID, r.ID)
		}
		if r.Late != want[r.ID] {
			t.Errorf("%s: late = %t, want %t", r.ID, r.Late, want[r.ID])
		}
		if r.SinceMs < 0 || r.Queues == nil {
			t.Errorf("%s: sinceMs %d, queues %v", r.ID, r.SinceMs, r.Queues)
		}
	}
	var out bytes.Buffer
	renderFleet(&out, rows, "ns1")
	if !strings.Contains(out.String(), "5 worker(s) live in namespace ns1, 2 late") {
		t.Errorf("footer:\n%s", out.String())
	}
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "a-late ") && !strings.HasSuffix(line, " late") {
			t.Errorf("a-late not marked: %q", line)
		}
		if strings.HasPrefix(line, "b-fresh ") && !strings.HasSuffix(line, " ok") {
			t.Errorf("b-fresh not ok: %q", line)
		}
	}
}
