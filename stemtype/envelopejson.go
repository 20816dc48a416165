package stemtype

import (
	"bytes"
	"encoding/json"
	"time"
)

// DecodeEnvelope decodes raw into e, which must be the zero Envelope, as
// json.Unmarshal(raw, e) does: the same envelope, or an error where
// json.Unmarshal fails. Envelopes as Envelope.AppendJSON writes them
// (stem's own: plain strings, no headers, no white space between fields)
// are read directly, in a fraction of json.Unmarshal's time (a busy worker
// spent a sixth of its CPU there); anything else is left to
// json.Unmarshal (TestDecodeEnvelopeMatchesUnmarshal,
// FuzzDecodeEnvelope).
func DecodeEnvelope(raw []byte, e *Envelope) error {
	if decodeEnvelopeFast(raw, e) {
		return nil
	}
	*e = Envelope{}
	return json.Unmarshal(raw, e)
}

// decodeEnvelopeFast reads raw when it is laid out as AppendJSON writes,
// and reports whether it did; when it did not, e holds a partial decode.
func decodeEnvelopeFast(raw []byte, e *Envelope) bool {
	s := envScanner{b: raw}
	var ok bool
	if !s.lit(`{"id":`) {
		return false
	}
	if e.ID, ok = s.str(); !ok || !s.lit(`,"task":`) {
		return false
	}
	if e.Task, ok = s.str(); !ok {
		return false
	}
	if s.lit(`,"args":`) {
		if e.Args, ok = s.value(); !ok {
			return false
		}
	}
	if !s.lit(`,"queue":`) {
		return false
	}
	if e.Queue, ok = s.str(); !ok || !s.lit(`,"attempt":`) {
		return false
	}
	if e.Attempt, ok = s.int(); !ok {
		return false
	}
	if s.lit(`,"maxRetries":`) {
		n, ok := s.int()
		if !ok {
			return false
		}
		e.MaxRetries = &n
	}
	if s.lit(`,"priority":`) {
		if e.Priority, ok = s.int(); !ok {
			return false
		}
	}
	if s.lit(`,"notBefore":`) && !s.time(&e.NotBefore) {
		return false
	}
	if !s.lit(`,"createdAt":`) || !s.time(&e.CreatedAt) {
		return false
	}
	if s.lit(`,"sig":`) {
		if e.Sig, ok = s.str(); !ok {
			return false
		}
	}
	return s.lit(`}`) && s.i == len(s.b)
}

// envScanner reads the fields of an envelope in AppendJSON's layout.
type envScanner struct {
	b []byte
	i int
}

// lit consumes l if the input continues with it.
func (s *envScanner) lit(l string) bool {
	if len(s.b)-s.i >= len(l) && string(s.b[s.i:s.i+len(l)]) == l {
		s.i += len(l)
		return true
	}
	return false
}

// strEnd returns the index of the quote that closes the plain string at
// s.i (printable ASCII, no escapes), or -1.
func (s *envScanner) strEnd() int {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return -1
	}
	for j := s.i + 1; j < len(s.b); j++ {
		switch c := s.b[j]; {
		case c == '"':
			return j
		case c < 0x20 || c >= 0x80 || c == '\\':
			return -1
		}
	}
	return -1
}

// str consumes a plain string.
func (s *envScanner) str() (string, bool) {
	end := s.strEnd()
	if end < 0 {
		return "", false
	}
	v := string(s.b[s.i+1 : end])
	s.i = end + 1
	return v, true
}

// int consumes an integer in JSON's form (no leading zero, no fraction
// or exponent) of at most 18 digits, so that it cannot overflow.
func (s *envScanner) int() (int, bool) {
	j, neg := s.i, false
	if j < len(s.b) && s.b[j] == '-' {
		neg = true
		j++
	}
	start, n := j, 0
	for ; j < len(s.b) && s.b[j] >= '0' && s.b[j] <= '9'; j++ {
		n = n*10 + int(s.b[j]-'0')
	}
	if digits := j - start; digits == 0 || digits > 18 || (s.b[start] == '0' && digits > 1) {
		return 0, false
	}
	if j < len(s.b) && (s.b[j] == '.' || s.b[j] == 'e' || s.b[j] == 'E') {
		return 0, false
	}
	s.i = j
	if neg {
		n = -n
	}
	return n, true
}

// time consumes a plain string and decodes it with time.Time's
// UnmarshalJSON, as json.Unmarshal does.
func (s *envScanner) time(t *time.Time) bool {
	end := s.strEnd()
	if end < 0 || t.UnmarshalJSON(s.b[s.i:end+1]) != nil {
		return false
	}
	s.i = end + 1
	return true
}

// value consumes one JSON value that starts at s.i and ends right before
// a ',' or '}' of the envelope, and returns a copy of its bytes, as
// json.RawMessage keeps them.
func (s *envScanner) value() (json.RawMessage, bool) {
	start, depth := s.i, 0
scan:
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case '"':
			for s.i++; s.i < len(s.b) && s.b[s.i] != '"'; s.i++ {
				if s.b[s.i] == '\\' {
					s.i++
				}
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				break scan
			}
			depth--
		case ',':
			if depth == 0 {
				break scan
			}
		}
		s.i++
	}
	v := s.b[start:min(s.i, len(s.b))]
	if len(v) == 0 || isSpace(v[0]) || isSpace(v[len(v)-1]) || !json.Valid(v) {
		return nil, false
	}
	return bytes.Clone(v), true
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }
