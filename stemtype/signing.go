package stemtype

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"slices"
	"time"
)

// The signed bytes of a message (what stem.SigningKeys feeds to
// HMAC-SHA256) are not its JSON, which brokers and stores may carry in
// other layouts, but a canonical encoding of its fields: a domain string
// naming the kind of message, then every signed field in a fixed order,
// strings and JSON values prefixed by their length, integers as varints,
// times as Unix seconds and nanoseconds (the zero time apart), so that no
// two different messages share their signed bytes, and a message signed
// as one kind can never pass for another. JSON values (arguments, a
// command's payload) are signed compacted, with <, > and & escaped in
// strings, as json.Marshal embeds them: white space a broker adds or drops
// does not matter, a changed value does.
const (
	sigDomainEnvelope = "stem/envelope/v1"
	sigDomainCommand  = "stem/command/v1"
	sigDomainRevoke   = "stem/revoke/v1"
)

// AppendSigningBytes appends the bytes a producer signs for e (every field
// but Sig) to dst. Workers re-sign the envelope of a retry, whose Attempt
// and NotBefore change. The namespace is not signed (a Client does not
// know it): give namespaces that do not trust each other keys of their
// own.
func (e *Envelope) AppendSigningBytes(dst []byte) []byte {
	w := sigWriter{b: dst}
	w.str(sigDomainEnvelope)
	w.str(e.ID)
	w.str(e.Task)
	w.json(e.Args)
	w.str(e.Queue)
	w.int(int64(e.Attempt))
	if e.MaxRetries == nil {
		w.b = append(w.b, 0)
	} else {
		w.b = append(w.b, 1)
		w.int(int64(*e.MaxRetries))
	}
	w.int(int64(e.Priority))
	keys := make([]string, 0, len(e.Headers))
	for k := range e.Headers {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	w.int(int64(len(keys)))
	for _, k := range keys {
		w.str(k)
		w.str(e.Headers[k])
	}
	w.time(e.NotBefore)
	w.time(e.CreatedAt)
	return w.b
}

// AppendSigningBytes appends the bytes a controller of namespace signs for
// c (every field but Sig, and the namespace) to dst.
func (c *ControlCommand) AppendSigningBytes(dst []byte, namespace string) []byte {
	w := sigWriter{b: dst}
	w.str(sigDomainCommand)
	w.str(namespace)
	w.str(c.RequestID)
	w.str(c.Type)
	w.int(int64(len(c.Targets)))
	for _, t := range c.Targets {
		w.str(t)
	}
	w.json(c.Payload)
	w.int(c.TimeoutMs)
	w.int(int64(c.Version))
	w.time(c.IssuedAt)
	return w.b
}

// AppendSigningBytes appends the bytes a controller signs for r (every
// field but Sig and Version) to dst. Version is left out because the
// revoke store assigns it (stemdriver.RevokeStore); so someone who can
// write to the store, without the key, can store a signed record again
// under another version, until it expires (IssuedAt and ExpiresAt are
// signed), but never make one up.
func (r *RevokeRecord) AppendSigningBytes(dst []byte) []byte {
	w := sigWriter{b: dst}
	w.str(sigDomainRevoke)
	w.str(r.Namespace)
	w.str(r.TaskID)
	w.str(r.Kind)
	w.str(r.Name)
	w.str(r.Queue)
	w.bool(r.Resumed)
	w.time(r.IssuedAt)
	w.bool(r.Terminate)
	w.int(r.KillAfterMs)
	w.str(r.Reason)
	w.str(r.RequestedBy)
	w.time(r.ExpiresAt)
	return w.b
}

// sigWriter appends fields in the signed encoding.
type sigWriter struct{ b []byte }

func (w *sigWriter) str(s string) {
	w.b = binary.AppendUvarint(w.b, uint64(len(s)))
	w.b = append(w.b, s...)
}

func (w *sigWriter) int(n int64) { w.b = binary.AppendVarint(w.b, n) }

func (w *sigWriter) bool(v bool) {
	if v {
		w.b = append(w.b, 1)
	} else {
		w.b = append(w.b, 0)
	}
}

func (w *sigWriter) time(t time.Time) {
	if t.IsZero() {
		w.b = append(w.b, 0)
		return
	}
	w.b = append(w.b, 1)
	w.int(t.Unix())
	w.int(int64(t.Nanosecond()))
}

// json appends raw as json.Marshal embeds a json.RawMessage (compacted,
// HTML characters escaped); raw that is not valid JSON is appended as it
// is (it cannot be published, so it is never signed and verified both).
func (w *sigWriter) json(raw json.RawMessage) {
	if len(raw) == 0 {
		w.str("")
		return
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		w.str(string(raw))
		return
	}
	var escaped bytes.Buffer
	json.HTMLEscape(&escaped, compact.Bytes())
	w.b = binary.AppendUvarint(w.b, uint64(escaped.Len()))
	w.b = append(w.b, escaped.Bytes()...)
}
