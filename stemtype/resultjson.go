package stemtype

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendJSON appends the JSON encoding of r to dst and returns the
// extended buffer: the same bytes as json.Marshal(r), in a fraction of its
// time (workers encode one result per task; reflection, and the check and
// compaction of every time.Time's MarshalJSON output, made json.Marshal a
// tenth of a busy worker's CPU). Values the fast path does not cover (a
// string that needs escaping, a time json.Marshal refuses or whose zone
// has seconds) make it fall back to json.Marshal, so the output never
// differs (TestResultAppendJSONMatchesMarshal, FuzzResultAppendJSON).
func (r *TaskResult) AppendJSON(dst []byte) ([]byte, error) {
	if !r.fastJSON() {
		b, err := json.Marshal(r)
		return append(dst, b...), err
	}
	dst = append(dst, `{"id":`...)
	dst = appendPlainString(dst, r.ID)
	dst = append(dst, `,"task":`...)
	dst = appendPlainString(dst, r.Task)
	if r.Queue != "" {
		dst = append(dst, `,"queue":`...)
		dst = appendPlainString(dst, r.Queue)
	}
	dst = append(dst, `,"state":`...)
	dst = appendPlainString(dst, string(r.State))
	dst = append(dst, `,"attempt":`...)
	dst = strconv.AppendInt(dst, int64(r.Attempt), 10)
	var err error
	if len(r.Result) > 0 {
		dst = append(dst, `,"result":`...)
		if dst, err = appendRaw(dst, r.Result); err != nil {
			return dst, err
		}
	}
	if r.Error != nil {
		if dst, err = appendMarshal(dst, `,"error":`, r.Error); err != nil {
			return dst, err
		}
	}
	if r.Progress != nil {
		if dst, err = appendMarshal(dst, `,"progress":`, r.Progress); err != nil {
			return dst, err
		}
	}
	if len(r.Meta) > 0 {
		if dst, err = appendMarshal(dst, `,"meta":`, r.Meta); err != nil {
			return dst, err
		}
	}
	if r.WorkerID != "" {
		dst = append(dst, `,"workerId":`...)
		dst = appendPlainString(dst, r.WorkerID)
	}
	for _, f := range [...]struct {
		key string
		t   *time.Time
	}{{`,"notBefore":`, &r.NotBefore}, {`,"startedAt":`, &r.StartedAt}, {`,"finishedAt":`, &r.FinishedAt}} {
		if !f.t.IsZero() {
			dst = append(dst, f.key...)
			dst = appendTime(dst, *f.t)
		}
	}
	dst = append(dst, `,"updatedAt":`...)
	dst = appendTime(dst, r.UpdatedAt)
	return append(dst, '}'), nil
}

// fastJSON says whether AppendJSON's own encoding covers r: its strings
// need no escaping and its times encode as json.Marshal encodes them.
func (r *TaskResult) fastJSON() bool {
	for _, s := range [...]string{r.ID, r.Task, r.Queue, string(r.State), r.WorkerID} {
		if !plainString(s) {
			return false
		}
	}
	for _, t := range [...]time.Time{r.NotBefore, r.StartedAt, r.FinishedAt, r.UpdatedAt} {
		if !plainTime(t) {
			return false
		}
	}
	return true
}

// plainString says whether s encodes as itself between quotes: printable
// ASCII without the characters json.Marshal escapes (", \, and the HTML
// ones <, > and &).
func plainString(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// plainTime says whether t (if set) encodes as RFC 3339 with nanoseconds,
// as time.Time's MarshalJSON does: a four-digit year, and a zone offset in
// whole minutes. The zero time is plain.
func plainTime(t time.Time) bool {
	if t.IsZero() {
		return true
	}
	_, off := t.Zone()
	return t.Year() >= 0 && t.Year() <= 9999 && off%60 == 0
}

func appendPlainString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

func appendTime(dst []byte, t time.Time) []byte {
	dst = append(dst, '"')
	dst = t.AppendFormat(dst, time.RFC3339Nano)
	return append(dst, '"')
}

// appendRaw appends raw JSON as json.Marshal embeds a json.RawMessage:
// compacted, with <, > and & (and U+2028, U+2029) escaped in strings.
func appendRaw(dst []byte, raw json.RawMessage) ([]byte, error) {
	var compact bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		// json.Marshal's error for the same value.
		_, err = json.Marshal(raw)
		return dst, err
	}
	var escaped bytes.Buffer
	json.HTMLEscape(&escaped, compact.Bytes())
	return append(dst, escaped.Bytes()...), nil
}

// appendMarshal appends key and json.Marshal(v).
func appendMarshal(dst []byte, key string, v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return dst, err
	}
	dst = append(dst, key...)
	return append(dst, b...), nil
}

// AppendJSON appends the JSON encoding of e to dst and returns the
// extended buffer: the same bytes as json.Marshal(e), faster, falling back
// to json.Marshal where TaskResult.AppendJSON does (and for headers, which
// it leaves to json.Marshal's sorted map encoding).
func (e *Envelope) AppendJSON(dst []byte) ([]byte, error) {
	if !plainString(e.ID) || !plainString(e.Task) || !plainString(e.Queue) || !plainString(e.Sig) ||
		!plainTime(e.NotBefore) || !plainTime(e.CreatedAt) {
		b, err := json.Marshal(e)
		return append(dst, b...), err
	}
	dst = append(dst, `{"id":`...)
	dst = appendPlainString(dst, e.ID)
	dst = append(dst, `,"task":`...)
	dst = appendPlainString(dst, e.Task)
	var err error
	if len(e.Args) > 0 {
		dst = append(dst, `,"args":`...)
		if dst, err = appendRaw(dst, e.Args); err != nil {
			return dst, err
		}
	}
	dst = append(dst, `,"queue":`...)
	dst = appendPlainString(dst, e.Queue)
	dst = append(dst, `,"attempt":`...)
	dst = strconv.AppendInt(dst, int64(e.Attempt), 10)
	if e.MaxRetries != nil {
		dst = append(dst, `,"maxRetries":`...)
		dst = strconv.AppendInt(dst, int64(*e.MaxRetries), 10)
	}
	if e.Priority != 0 {
		dst = append(dst, `,"priority":`...)
		dst = strconv.AppendInt(dst, int64(e.Priority), 10)
	}
	if len(e.Headers) > 0 {
		if dst, err = appendMarshal(dst, `,"headers":`, e.Headers); err != nil {
			return dst, err
		}
	}
	if !e.NotBefore.IsZero() {
		dst = append(dst, `,"notBefore":`...)
		dst = appendTime(dst, e.NotBefore)
	}
	dst = append(dst, `,"createdAt":`...)
	dst = appendTime(dst, e.CreatedAt)
	if e.Sig != "" {
		dst = append(dst, `,"sig":`...)
		dst = appendPlainString(dst, e.Sig)
	}
	return append(dst, '}'), nil
}
