package stem

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// Keys of the tests: random-looking, 44 bytes as `openssl rand -base64 32`
// prints them.
const (
	testKeyOld = "q3Jd9f0aZk1mXbVw2T7sYcN4uEoR8iLpGh5KxM6yQ0U="
	testKeyNew = "Zp7Qw1Lr9Tn3Vx5Bz0Hc2Kd8Fj4Gm6Ns1Pq3Rt5Sv7U="
)

func mustKeys(t *testing.T, keys ...string) *SigningKeys {
	t.Helper()
	k, err := NewSigningKeys(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// checkRejected fails unless err matches ErrSignatureInvalid.
func checkRejected(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, ErrSignatureInvalid) {
		t.Errorf("%s: verify = %v, want an error matching ErrSignatureInvalid", what, err)
	}
}

// fieldsCovered fails unless names, the fields a test tampers with, are
// every field of v's struct type but those skipped: a field added later
// must be signed (and tampered with here) or skipped on purpose.
func fieldsCovered(t *testing.T, v any, names []string, skipped ...string) {
	t.Helper()
	typ := reflect.TypeOf(v)
	var want []string
	for i := range typ.NumField() {
		if f := typ.Field(i).Name; !slices.Contains(skipped, f) {
			want = append(want, f)
		}
	}
	slices.Sort(want)
	got := slices.Sorted(slices.Values(names))
	if !slices.Equal(got, want) {
		t.Fatalf("fields tampered with %v, want every field of %s but %v: %v", got, typ, skipped, want)
	}
}

func signedEnvelope(k *SigningKeys) *stemtype.Envelope {
	three := 3
	e := &stemtype.Envelope{ID: "task-1", Task: "mail.send", Args: json.RawMessage(`{"to":"a@b","n":[1,2]}`),
		Queue: "mail", Attempt: 1, MaxRetries: &three, Priority: 2, Headers: map[string]string{"traceparent": "00-abc", "by": "api"},
		NotBefore: time.Date(2026, 11, 30, 12, 0, 0, 5, time.UTC), CreatedAt: time.Date(2026, 11, 30, 11, 0, 0, 7, time.UTC)}
	k.SignEnvelope(e)
	return e
}

// A signed envelope verifies, through stem's JSON and through anybody's
// (indented, reordered); tampering with any field, the signature itself,
// or signing with a key not held, is refused.
func TestEnvelopeSignatureCoversEveryField(t *testing.T) {
	k := mustKeys(t, testKeyOld)
	e := signedEnvelope(k)
	if err := k.VerifyEnvelope(e); err != nil {
		t.Fatalf("verify the envelope just signed: %v", err)
	}
	raw, err := e.AppendJSON(nil)
	if err != nil {
		t.Fatal(err)
	}
	var back stemtype.Envelope
	if err := stemtype.DecodeEnvelope(raw, &back); err != nil || back.Sig != e.Sig {
		t.Fatalf("decode %s: sig %q, err %v", raw, back.Sig, err)
	}
	if err := k.VerifyEnvelope(&back); err != nil {
		t.Errorf("verify after a JSON round trip: %v", err)
	}
	// Another layout of the same JSON (as a broker might keep it) still
	// verifies: arguments are signed in a canonical form.
	spaced := *e
	spaced.Args = json.RawMessage("{ \"to\" : \"a@b\",\n \"n\" : [ 1, 2 ] }")
	if err := k.VerifyEnvelope(&spaced); err != nil {
		t.Errorf("verify with the arguments re-spaced: %v", err)
	}

	tamper := map[string]func(e *stemtype.Envelope){
		"ID":         func(e *stemtype.Envelope) { e.ID = "task-2" },
		"Task":       func(e *stemtype.Envelope) { e.Task = "mail.drop" },
		"Args":       func(e *stemtype.Envelope) { e.Args = json.RawMessage(`{"to":"evil@b","n":[1,2]}`) },
		"Queue":      func(e *stemtype.Envelope) { e.Queue = "other" },
		"Attempt":    func(e *stemtype.Envelope) { e.Attempt = 0 },
		"MaxRetries": func(e *stemtype.Envelope) { e.MaxRetries = nil },
		"Priority":   func(e *stemtype.Envelope) { e.Priority = 9 },
		"Headers":    func(e *stemtype.Envelope) { e.Headers["by"] = "mallory" },
		"NotBefore":  func(e *stemtype.Envelope) { e.NotBefore = e.NotBefore.Add(time.Nanosecond) },
		"CreatedAt":  func(e *stemtype.Envelope) { e.CreatedAt = time.Time{} },
	}
	fieldsCovered(t, stemtype.Envelope{}, slices.Collect(func(yield func(string) bool) {
		for name := range tamper {
			if !yield(name) {
				return
			}
		}
	}), "Sig")
	for name, fn := range tamper {
		e := signedEnvelope(k)
		fn(e)
		checkRejected(t, "envelope with "+name+" changed", k.VerifyEnvelope(e))
	}
	// A MaxRetries of 0 is not the same as none; one header moved into
	// another is not the same either.
	zero := 0
	e2 := signedEnvelope(k)
	e2.MaxRetries = &zero
	checkRejected(t, "maxRetries 3 -> 0", k.VerifyEnvelope(e2))
	e3 := signedEnvelope(k)
	e3.Headers = map[string]string{"traceparent": "00-abcby", "": "api"}
	checkRejected(t, "headers shifted", k.VerifyEnvelope(e3))

	for name, sig := range map[string]string{
		"unsigned":     "",
		"truncated":    e.Sig[:len(e.Sig)-2],
		"garbage":      "not a signature",
		"other scheme": "s9" + e.Sig[2:],
		"flipped":      flipChar(e.Sig, len(e.Sig)-10),
	} {
		bad := signedEnvelope(k)
		bad.Sig = sig
		checkRejected(t, "envelope "+name, k.VerifyEnvelope(bad))
	}
	other := signedEnvelope(mustKeys(t, testKeyNew))
	err = k.VerifyEnvelope(other)
	checkRejected(t, "envelope signed with a key not held", err)
	if err == nil || !strings.Contains(err.Error(), "not among") {
		t.Errorf("error for a key not held = %v, want it to say so", err)
	}
}

// flipChar returns s with its i-th character replaced by another base64
// one.
func flipChar(s string, i int) string {
	c := byte('A')
	if s[i] == 'A' {
		c = 'B'
	}
	return s[:i] + string(c) + s[i+1:]
}

func signedCommand(k *SigningKeys, ns string) *stemtype.ControlCommand {
	c := &stemtype.ControlCommand{RequestID: "req-1", Type: stemtype.CommandRevoke, Targets: []string{"w1", "w2"},
		Payload: json.RawMessage(`{"records":[{"taskId":"t1"}]}`), TimeoutMs: 5000, Version: stemtype.ControlVersion,
		IssuedAt: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)}
	k.SignCommand(c, ns)
	return c
}

// A signed command verifies in its namespace only; tampering with any
// field is refused.
func TestCommandSignatureCoversEveryField(t *testing.T) {
	k := mustKeys(t, testKeyOld)
	if err := k.VerifyCommand(signedCommand(k, "ns"), "ns"); err != nil {
		t.Fatalf("verify the command just signed: %v", err)
	}
	checkRejected(t, "command of another namespace", k.VerifyCommand(signedCommand(k, "ns"), "other"))
	tamper := map[string]func(c *stemtype.ControlCommand){
		"RequestID": func(c *stemtype.ControlCommand) { c.RequestID = "req-2" },
		"Type":      func(c *stemtype.ControlCommand) { c.Type = stemtype.CommandShutdown },
		"Targets":   func(c *stemtype.ControlCommand) { c.Targets = []string{stemtype.BroadcastTarget} },
		"Payload":   func(c *stemtype.ControlCommand) { c.Payload = json.RawMessage(`{"records":[{"taskId":"t2"}]}`) },
		"TimeoutMs": func(c *stemtype.ControlCommand) { c.TimeoutMs = 1 },
		"Version":   func(c *stemtype.ControlCommand) { c.Version = 2 },
		"IssuedAt":  func(c *stemtype.ControlCommand) { c.IssuedAt = c.IssuedAt.Add(time.Hour) },
	}
	var names []string
	for name, fn := range tamper {
		names = append(names, name)
		c := signedCommand(k, "ns")
		fn(c)
		checkRejected(t, "command with "+name+" changed", k.VerifyCommand(c, "ns"))
	}
	fieldsCovered(t, stemtype.ControlCommand{}, names, "Sig")
	unsigned := signedCommand(k, "ns")
	unsigned.Sig = ""
	checkRejected(t, "unsigned command", k.VerifyCommand(unsigned, "ns"))
}

func signedRecord(k *SigningKeys) *stemtype.RevokeRecord {
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	r := &stemtype.RevokeRecord{Namespace: "ns", TaskID: "t1", Version: 10, IssuedAt: at, Terminate: true,
		KillAfterMs: 100, Reason: "why", RequestedBy: "ops", ExpiresAt: at.Add(time.Hour)}
	k.SignRevoke(r)
	return r
}

// A signed revoke record verifies whatever version the store assigned it;
// tampering with any other field is refused.
func TestRevokeSignatureCoversEveryFieldButVersion(t *testing.T) {
	k := mustKeys(t, testKeyOld)
	r := signedRecord(k)
	r.Version = 99 // the store assigns max(stored+1, proposed)
	if err := k.VerifyRevoke(r); err != nil {
		t.Fatalf("verify the record just signed, version changed: %v", err)
	}
	tamper := map[string]func(r *stemtype.RevokeRecord){
		"Namespace":   func(r *stemtype.RevokeRecord) { r.Namespace = "other" },
		"TaskID":      func(r *stemtype.RevokeRecord) { r.TaskID = "t2" },
		"Kind":        func(r *stemtype.RevokeRecord) { r.Kind = stemtype.RevokeKindName },
		"Name":        func(r *stemtype.RevokeRecord) { r.Name = "x" },
		"Queue":       func(r *stemtype.RevokeRecord) { r.Queue = "q" },
		"Resumed":     func(r *stemtype.RevokeRecord) { r.Resumed = true },
		"IssuedAt":    func(r *stemtype.RevokeRecord) { r.IssuedAt = r.IssuedAt.Add(time.Second) },
		"Terminate":   func(r *stemtype.RevokeRecord) { r.Terminate = false },
		"KillAfterMs": func(r *stemtype.RevokeRecord) { r.KillAfterMs = 0 },
		"Reason":      func(r *stemtype.RevokeRecord) { r.Reason = "" },
		"RequestedBy": func(r *stemtype.RevokeRecord) { r.RequestedBy = "mallory" },
		"ExpiresAt":   func(r *stemtype.RevokeRecord) { r.ExpiresAt = time.Time{} },
	}
	var names []string
	for name, fn := range tamper {
		names = append(names, name)
		r := signedRecord(k)
		fn(r)
		checkRejected(t, "record with "+name+" changed", k.VerifyRevoke(r))
	}
	fieldsCovered(t, stemtype.RevokeRecord{}, names, "Sig", "Version")
	// Strings next to each other cannot trade bytes.
	r2 := signedRecord(k)
	r2.Reason, r2.RequestedBy = "whyo", "ps"
	checkRejected(t, "bytes moved between reason and requester", k.VerifyRevoke(r2))
}

// Rotation: a verifier accepts what any of its keys signed while that key
// is in its list, and refuses it once the key is removed; the first key
// signs.
func TestSigningKeyRotation(t *testing.T) {
	old := mustKeys(t, testKeyOld)
	both := mustKeys(t, testKeyNew, testKeyOld)
	onlyNew := mustKeys(t, testKeyNew)
	byOld := signedEnvelope(old)
	if err := both.VerifyEnvelope(byOld); err != nil {
		t.Errorf("signed with the old key, verified with [new, old]: %v", err)
	}
	checkRejected(t, "signed with the old key, verified with [new]", onlyNew.VerifyEnvelope(byOld))
	byBoth := signedEnvelope(both)
	if err := onlyNew.VerifyEnvelope(byBoth); err != nil {
		t.Errorf("signed with [new, old] (new signs), verified with [new]: %v", err)
	}
	checkRejected(t, "signed with [new, old], verified with [old]", old.VerifyEnvelope(byBoth))
	if ids := both.IDs(); len(ids) != 2 || ids[0] != onlyNew.IDs()[0] || ids[1] != old.IDs()[0] || ids[0] == ids[1] {
		t.Errorf("ids %v, want [id(new) id(old)], distinct", ids)
	}
}

// Weak keys and malformed lists are refused, and no error, string or log
// value ever shows a key.
func TestSigningKeysRefuseWeakKeysAndNeverShowOne(t *testing.T) {
	for name, list := range map[string]string{
		"short":     "abcdefghijklmnop",
		"uniform":   strings.Repeat("ab", 20),
		"empty":     testKeyOld + ",",
		"blank":     "  ",
		"repeated":  testKeyOld + "," + testKeyOld,
		"short 2nd": testKeyOld + ",tooshort",
	} {
		_, err := ParseSigningKeys(list)
		if err == nil {
			t.Errorf("%s: ParseSigningKeys accepted it", name)
			continue
		}
		for _, key := range strings.Split(list, ",") {
			if key = strings.TrimSpace(key); len(key) > 3 && strings.Contains(err.Error(), key) {
				t.Errorf("%s: error %q shows a key", name, err)
			}
		}
	}
	k, err := ParseSigningKeys(" " + testKeyNew + " , " + testKeyOld + "\n")
	if err != nil {
		t.Fatal(err)
	}
	var logged strings.Builder
	slog.New(slog.NewTextHandler(&logged, nil)).Info("keys", "keys", k)
	for _, s := range []string{k.String(), fmt.Sprintf("%v %+v %#v %s", k, k, k, k), logged.String()} {
		if strings.Contains(s, testKeyNew) || strings.Contains(s, testKeyOld) {
			t.Errorf("%q shows a key", s)
		}
		if !strings.Contains(s, k.IDs()[0]) {
			t.Errorf("%q does not name the signing key's id %s", s, k.IDs()[0])
		}
	}

	dir := t.TempDir()
	file := filepath.Join(dir, "keys")
	if err := os.WriteFile(file, []byte("# rotated 2026-11-30\n"+testKeyNew+"\n\n  "+testKeyOld+"  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fk, err := ReadSigningKeyFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(fk.IDs(), k.IDs()) {
		t.Errorf("key file ids %v, want %v", fk.IDs(), k.IDs())
	}
	if err := os.WriteFile(file, []byte(testKeyNew+"\nshort-key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSigningKeyFile(file); err == nil || !strings.Contains(err.Error(), "line 2") || strings.Contains(err.Error(), "short-key") {
		t.Errorf("key file with a short key on line 2: %v, want an error naming line 2 and not the key", err)
	}
}

// A worker with keys acts on a signed command once, within the window,
// and refuses it unsigned, replayed, or issued outside the window.
func TestCheckCommandWindowAndReplay(t *testing.T) {
	k := mustKeys(t, testKeyOld)
	w := &Worker{cfg: WorkerConfig{Namespace: "ns"}, sig: workerSigning{keys: k}}
	now := time.Now()
	cmd := func(id string, at time.Time) *stemtype.ControlCommand {
		c := &stemtype.ControlCommand{RequestID: id, Type: stemtype.CommandPing, Targets: []string{"*"}, IssuedAt: at}
		k.SignCommand(c, "ns")
		return c
	}
	if err := w.checkCommand(cmd("a", now), now); err != nil {
		t.Fatalf("fresh signed command: %v", err)
	}
	if err := w.checkCommand(cmd("a", now), now.Add(time.Second)); !errors.Is(err, errReplayed) {
		t.Errorf("same request id again: %v, want a replay", err)
	}
	for name, at := range map[string]time.Time{
		"issued 2 minutes ago":          now.Add(-2 * time.Minute),
		"issued 2 minutes from now":     now.Add(2 * time.Minute),
		"issued a window and a bit ago": now.Add(-CommandWindow - time.Millisecond),
	} {
		err := w.checkCommand(cmd("b-"+name, at), now)
		checkRejected(t, name, err)
		if errors.Is(err, errReplayed) || !strings.Contains(fmt.Sprint(err), "window") {
			t.Errorf("%s: %v, want a refusal naming the window", name, err)
		}
	}
	if err := w.checkCommand(cmd("c", now.Add(-CommandWindow/2)), now); err != nil {
		t.Errorf("issued half a window ago: %v", err)
	}
	unsigned := cmd("d", now)
	unsigned.Sig = ""
	checkRejected(t, "unsigned", w.checkCommand(unsigned, now))
	// Without keys, nothing is checked.
	if err := (&Worker{}).checkCommand(unsigned, now); err != nil {
		t.Errorf("worker without keys: %v", err)
	}
}

// The seen request ids are forgotten once their window closed, and never
// grow past maxSeenRequests.
func TestSeenRequestsBounded(t *testing.T) {
	var s seenRequests
	now := time.Now()
	if !s.add("x", now.Add(time.Minute), now) || s.add("x", now.Add(time.Minute), now) {
		t.Fatal("x: want new, then seen")
	}
	if !s.add("y", now.Add(3*time.Minute), now.Add(2*time.Minute)) || s.add("y", now.Add(3*time.Minute), now) {
		t.Fatal("y: want new, then seen")
	}
	if _, ok := s.until["x"]; ok {
		t.Error("x kept after its window closed")
	}
	for i := range maxSeenRequests + 10 {
		s.add(fmt.Sprint("id-", i), now.Add(time.Hour), now)
	}
	if n := len(s.until); n > maxSeenRequests || len(s.order) != n {
		t.Errorf("%d ids held (%d in order), want at most %d", n, len(s.order), maxSeenRequests)
	}
}
