package isolated

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stem-go/stem"
)

func frameOf(payload string) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(payload))), payload...)
}

func TestFrameRoundTrip(t *testing.T) {
	var stream bytes.Buffer
	payloads := []string{`{"type":"hello","protocol":1}`, "x", strings.Repeat("y", 1000)}
	for _, p := range payloads {
		if err := writeFrame(&stream, []byte(p), 1000); err != nil {
			t.Fatalf("writeFrame(%d bytes): %v", len(p), err)
		}
	}
	// One byte at a time: frames are reassembled whatever the reads return.
	r := iotest.OneByteReader(&stream)
	for _, want := range payloads {
		got, err := readFrame(r, 1000)
		if err != nil || string(got) != want {
			t.Fatalf("readFrame = %.40q, %v; want %.40q", got, err, want)
		}
	}
	if _, err := readFrame(r, 1000); err != io.EOF {
		t.Errorf("readFrame at the end = %v, want io.EOF itself", err)
	}
}

func TestWriteFrameRefuses(t *testing.T) {
	var buf bytes.Buffer
	if err := writeFrame(&buf, nil, 10); !errors.Is(err, ErrFrameMalformed) {
		t.Errorf("empty payload: %v, want ErrFrameMalformed", err)
	}
	if err := writeFrame(&buf, make([]byte, 11), 10); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("oversized payload: %v, want ErrFrameTooLarge", err)
	}
	if buf.Len() != 0 {
		t.Errorf("refused frames wrote %d bytes", buf.Len())
	}
	if err := writeFrame(iotest.TruncateWriter(io.Discard, 0), []byte("x"), 10); err != nil {
		t.Errorf("writeFrame to a discarding writer: %v", err)
	}
}

func TestReadFrameErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input []byte
		max   int
		want  error
		text  string
	}{
		{"clean end", nil, 10, io.EOF, "EOF"},
		{"partial length", []byte{0, 0}, 10, ErrFrameTruncated, "inside a length prefix"},
		{"zero length", []byte{0, 0, 0, 0}, 10, ErrFrameMalformed, "empty payload"},
		{"over the limit", frameOf(strings.Repeat("z", 11)), 10, ErrFrameTooLarge, "11 bytes, limit 10"},
		{"4 GiB claimed", []byte{0xff, 0xff, 0xff, 0xff, 'x'}, 1 << 20, ErrFrameTooLarge, "4294967295 bytes"},
		{"truncated payload", frameOf("hello")[:7], 10, ErrFrameTruncated, "inside a 5-byte payload"},
		{"payload missing", frameOf("hello")[:4], 10, ErrFrameTruncated, "inside a 5-byte payload"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := bytes.NewReader(tc.input)
			got, err := readFrame(r, tc.max)
			if !errors.Is(err, tc.want) || !strings.Contains(fmt.Sprint(err), tc.text) || got != nil {
				t.Errorf("readFrame = %q, %v; want an error matching %v and mentioning %q", got, err, tc.want, tc.text)
			}
			if errors.Is(tc.want, ErrFrameTooLarge) && r.Len() != len(tc.input)-frameHeader {
				t.Errorf("an oversized frame's payload was read (%d bytes left of %d)", r.Len(), len(tc.input)-frameHeader)
			}
		})
	}
	boom := errors.New("boom")
	if _, err := readFrame(iotest.ErrReader(boom), 10); !errors.Is(err, boom) {
		t.Errorf("read error: %v, want it wrapped", err)
	}
}

func TestDecodeMessage(t *testing.T) {
	child := []string{typeHello, typeHeartbeat, typeExtendLease, typeProgress, typeResult, typeError}
	for _, tc := range []struct {
		payload string
		ok      bool
	}{
		{`{"type":"hello","protocol":1,"pid":9,"tasks":["a"]}`, true},
		{`{"type":"hello"}`, false},
		{`{"type":"heartbeat","run":1,"seq":1}`, true},
		{`{"type":"heartbeat","run":1}`, false},
		{`{"type":"extendLease","run":1,"seq":2,"ms":5000}`, true},
		{`{"type":"extendLease","run":1,"seq":2,"ms":0}`, false},
		{`{"type":"progress","run":1,"seq":3,"percent":0}`, true},
		{`{"type":"progress","run":1,"seq":3}`, false},
		{`{"type":"result","run":1,"result":{"a":1}}`, true},
		{`{"type":"result","result":1}`, false},
		{`{"type":"error","run":1,"error":{"code":"handler","message":"m"}}`, true},
		{`{"type":"error","run":1}`, false},
		{`{"type":"run","run":1,"task":"t"}`, false}, // worker-to-child only
		{`{"type":"bogus"}`, false},
		{`{}`, false},
		{`[1,2]`, false},
		{`"hello"`, false},
		{`{"type":"result","run":1,"result":}`, false},
		{`{"type":"result","run":-1}`, false},
		{`{"type":"hello","protocol":1,"unknown":"fields are ignored"}`, true},
	} {
		m, err := decodeMessage([]byte(tc.payload), child...)
		if tc.ok && (err != nil || m == nil) {
			t.Errorf("decodeMessage(%s) = %v, want success", tc.payload, err)
		}
		if !tc.ok && (!errors.Is(err, ErrFrameMalformed) || m != nil) {
			t.Errorf("decodeMessage(%s) = %+v, %v; want ErrFrameMalformed", tc.payload, m, err)
		}
	}
	worker := []string{typeRun, typeCancel, typeReply}
	for payload, ok := range map[string]bool{
		`{"type":"run","run":1,"task":"t","args":{"x":1}}`:       true,
		`{"type":"run","run":1}`:                                 false,
		`{"type":"cancel","run":1,"cause":{"code":"revoked"}}`:   true,
		`{"type":"cancel","run":1}`:                              false,
		`{"type":"reply","seq":4}`:                               true,
		`{"type":"reply","seq":4,"error":{"code":"time_limit"}}`: true,
		`{"type":"reply"}`:                                       false,
		`{"type":"result","run":1}`:                              false,
	} {
		if _, err := decodeMessage([]byte(payload), worker...); (err == nil) != ok {
			t.Errorf("decodeMessage(%s) for the child = %v, want ok %v", payload, err, ok)
		}
	}
}

// TestCausesCrossThePipe: every cancellation cause and checkpoint error
// matches the same sentinels on the far side.
func TestCausesCrossThePipe(t *testing.T) {
	at := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	rev := &stem.RevokedError{TaskID: "t", Reason: "why", RequestedBy: "who", IssuedAt: at}
	for _, tc := range []struct {
		err  error
		want error
	}{
		{rev, stem.ErrTaskRevoked},
		{fmt.Errorf("wrapped: %w", rev), stem.ErrTaskRevoked},
		{stem.ErrTimeLimit, stem.ErrTimeLimit},
		{stem.ErrWorkerShutdown, stem.ErrWorkerShutdown},
		{stem.ErrLeaseLost, stem.ErrLeaseLost},
		{context.Canceled, context.Canceled},
	} {
		w := encodeCause(tc.err)
		b, _ := json.Marshal(w)
		var back wireError
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if got := decodeCause(&back); !errors.Is(got, tc.want) {
			t.Errorf("%v crossed as %s and came back as %v, which does not match %v", tc.err, b, got, tc.want)
		}
		if got := taskError(&back); !errors.Is(got, tc.want) {
			t.Errorf("task error %v came back as %v, which does not match %v", tc.err, got, tc.want)
		}
	}
	var got *stem.RevokedError
	if !errors.As(decodeCause(encodeCause(rev)), &got) || *got != *rev {
		t.Errorf("revoke came back as %+v, want %+v", got, rev)
	}
	if encodeCause(nil) != nil || decodeCause(nil) != nil {
		t.Error("nil did not stay nil")
	}
	other := errors.New("stem: something else")
	if got := decodeCause(encodeCause(other)); got.Error() != other.Error() {
		t.Errorf("plain error came back as %q", got)
	}
}

// TestTaskErrorMarks: NoRetry and RetryAfter keep their effect across the
// pipe, as the worker reads them.
func TestTaskErrorMarks(t *testing.T) {
	base := errors.New("base")
	if !stem.IsNoRetry(stem.NoRetry(base)) || stem.IsNoRetry(base) {
		t.Fatal("isNoRetry does not recognise stem.NoRetry: the root package changed its wrapper")
	}
	if d, ok := stem.RetryDelay(stem.RetryAfter(3*time.Second, base)); !ok || d != 3*time.Second {
		t.Fatalf("retryDelay = %v, %v: the root package changed its wrapper", d, ok)
	}
	for _, tc := range []struct {
		err     error
		noRetry bool
		delay   time.Duration
	}{
		{base, false, 0},
		{stem.NoRetry(base), true, 0},
		{fmt.Errorf("ctx: %w", stem.NoRetry(base)), true, 0},
		{errors.Join(base, stem.NoRetry(base)), true, 0},
		{stem.RetryAfter(1500*time.Millisecond, base), false, 1500 * time.Millisecond},
	} {
		w := encodeTaskError(tc.err)
		got := taskError(w)
		if got.Error() != tc.err.Error() {
			t.Errorf("%v came back as %q", tc.err, got)
		}
		if stem.IsNoRetry(got) != tc.noRetry {
			t.Errorf("%v came back with NoRetry %v, want %v", tc.err, stem.IsNoRetry(got), tc.noRetry)
		}
		if d, _ := stem.RetryDelay(got); d != tc.delay {
			t.Errorf("%v came back with retry delay %v, want %v", tc.err, d, tc.delay)
		}
	}
	if got := taskError(&wireError{Code: codeUnknownTask, Message: "m"}); !stem.IsNoRetry(got) {
		t.Error("an unknown entrypoint is retryable")
	}
	if got := taskError(&wireError{Code: codePanic, Message: "boom"}); got.Error() != "stem: task panicked: in isolated child: boom" {
		t.Errorf("panic came back as %q", got)
	}
}

// FuzzReadFrame feeds arbitrary streams to the frame decoder: it never
// panics, never returns a payload over the limit or an empty one, and what
// it accepts re-encodes to the bytes it consumed.
func FuzzReadFrame(f *testing.F) {
	f.Add(frameOf(`{"type":"hello","protocol":1}`), 64)
	f.Add([]byte{0, 0, 0, 0}, 64)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3}, 64)
	f.Add(append(frameOf("ab"), frameOf("cde")...), 4)
	f.Add(frameOf("hello")[:6], 64)
	f.Fuzz(func(t *testing.T, data []byte, max int) {
		if max <= 0 || max > 1<<16 {
			max = 1 << 10
		}
		r := bytes.NewReader(data)
		for {
			before := r.Len()
			p, err := readFrame(r, max)
			if err != nil {
				if p != nil {
					t.Fatalf("payload %q returned with error %v", p, err)
				}
				if !errors.Is(err, io.EOF) && !errors.Is(err, ErrFrameTruncated) && !errors.Is(err, ErrFrameTooLarge) && !errors.Is(err, ErrFrameMalformed) {
					t.Fatalf("unexpected error kind: %v", err)
				}
				return
			}
			if len(p) == 0 || len(p) > max {
				t.Fatalf("payload of %d bytes accepted with limit %d", len(p), max)
			}
			consumed := data[len(data)-before : len(data)-r.Len()]
			var re bytes.Buffer
			if err := writeFrame(&re, p, max); err != nil || !bytes.Equal(re.Bytes(), consumed) {
				t.Fatalf("re-encoding %q gave %x (%v), consumed %x", p, re.Bytes(), err, consumed)
			}
			if _, err := decodeMessage(p, typeHello, typeHeartbeat, typeExtendLease, typeProgress, typeResult, typeError); err != nil && !errors.Is(err, ErrFrameMalformed) {
				t.Fatalf("decodeMessage error of the wrong kind: %v", err)
			}
		}
	})
}

// FuzzDecodeMessage: any payload either decodes into a message that
// satisfies its type's requirements or fails with ErrFrameMalformed.
func FuzzDecodeMessage(f *testing.F) {
	for _, s := range []string{`{"type":"hello","protocol":1}`, `{"type":"progress","run":1,"seq":1,"percent":5,"data":[1]}`,
		`{"type":"error","run":2,"error":{"code":"revoked","revoke":{"taskId":"x","issuedAt":"2026-01-01T00:00:00Z"}}}`,
		`{"type":"result","run":1,"result":null}`, `{"type":"reply","seq":1,"error":null}`, `nul`, `{"type":1}`} {
		f.Add([]byte(s))
	}
	all := []string{typeHello, typeRun, typeHeartbeat, typeExtendLease, typeProgress, typeReply, typeCancel, typeResult, typeError}
	f.Fuzz(func(t *testing.T, payload []byte) {
		m, err := decodeMessage(payload, all...)
		if err != nil {
			if !errors.Is(err, ErrFrameMalformed) || m != nil {
				t.Fatalf("decodeMessage = %+v, %v", m, err)
			}
			return
		}
		switch m.Type {
		case typeProgress:
			if m.Percent == nil {
				t.Fatal("progress without percent accepted")
			}
		case typeError:
			if m.Error == nil {
				t.Fatal("error without error accepted")
			}
			_ = taskError(m.Error)
		case typeCancel:
			_ = decodeCause(m.Cause)
		case typeReply:
			_ = decodeCause(m.Error)
		}
		if _, err := encodeMessage(m); err != nil {
			t.Fatalf("a decoded message does not encode: %v", err)
		}
	})
}
