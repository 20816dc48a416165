package stempostgres

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// parseNotification reads back what Publish writes, and refuses anything
// else with an error naming what is wrong, never with a panic: another
// program may NOTIFY on the command channel (TestParseNotificationRefuses).
func FuzzParseNotification(f *testing.F) {
	tj, _ := json.Marshal([]string{"w1", "w2"})
	own, _ := inlinePayload(tj, []byte(`{"requestId":"r1","type":"ping","targets":["w1","w2"],"timeoutMs":5000,"version":1}`))
	for _, s := range []string{own, "m2:[]{}", "r42", "m-1:x", "m3:[]", "m:", "m99999999999999999999:x", "r-7", "r", "x", "",
		`m4:null{"requestId":"r"}`, `m5:[1,2]x`, "r0x10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		n, err := parseNotification(p)
		if err != nil {
			if n.targets != nil || n.msg != nil || n.stored != 0 {
				t.Fatalf("%q: error %v with a notification %+v", p, err, n)
			}
			if err.Error() == "" {
				t.Fatalf("%q: empty error", p)
			}
			return
		}
		if n.stored != 0 {
			if n.stored < 0 || n.msg != nil || n.targets != nil {
				t.Fatalf("%q: stored %+v", p, n)
			}
			if again, err := parseNotification("r" + strconv.FormatInt(n.stored, 10)); err != nil || again.stored != n.stored {
				t.Fatalf("%q: id %d does not read back: %+v %v", p, n.stored, again, err)
			}
			return
		}
		if !strings.HasPrefix(p, "m") || !strings.HasSuffix(p, string(n.msg)) {
			t.Fatalf("%q: parsed to message %q", p, n.msg)
		}
		// What was read encodes again and reads back the same.
		tj, err := json.Marshal(n.targets)
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseNotification("m" + strconv.Itoa(len(tj)) + ":" + string(tj) + string(n.msg))
		if err != nil || !bytes.Equal(again.msg, n.msg) || !slices.Equal(again.targets, n.targets) {
			t.Fatalf("%q: re-encoded %+v reads back as %+v, %v", p, n, again, err)
		}
	})
}

// What Publish sends inline parses back to its targets and message.
func FuzzInlinePayloadRoundTrip(f *testing.F) {
	f.Add("w1", "w2", []byte(`{"requestId":"r1","type":"ping"}`))
	f.Add("", "*", []byte{})
	f.Add("a:b", "7:", []byte("m3:[]"))
	f.Fuzz(func(t *testing.T, a, b string, msg []byte) {
		targets := []string{}
		for _, s := range []string{a, b} {
			if s != "" {
				targets = append(targets, s)
			}
		}
		tj, err := json.Marshal(targets)
		if err != nil {
			t.Fatal(err)
		}
		p, inline := inlinePayload(tj, msg)
		if !inline {
			return // sent through stem_control_messages
		}
		n, err := parseNotification(p)
		if err != nil {
			t.Fatalf("%q: %v", p, err)
		}
		// JSON replaces invalid UTF-8 in a target: the targets come back
		// as JSON reads them.
		var want []string
		if err := json.Unmarshal(tj, &want); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(n.msg, msg) || !slices.Equal(n.targets, want) || n.stored != 0 {
			t.Fatalf("%q: parsed %+v, want targets %q and message %q", p, n, want, msg)
		}
	})
}

// A notification someone else wrote is refused with an error that says
// what is wrong; the negative length once panicked (slice bounds) and
// took the worker down.
func TestParseNotificationRefuses(t *testing.T) {
	for p, want := range map[string]string{
		"m-1:x":      "targets' length",
		"m5:[]":      "targets' length",
		"mx:[]":      "targets' length",
		"m[]":        "without ':'",
		`m2:{}{}`:    "not a JSON list",
		`m5:[1,2]{}`: "not a JSON list",
		"r-3":        "positive integer",
		"rabc":       "positive integer",
		"":           "unknown notification kind",
		"{}":         "unknown notification kind",
	} {
		_, err := parseNotification(p)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseNotification(%q) = %v, want an error saying %q", p, err, want)
		}
	}
}
