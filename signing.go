package stem

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// MinSigningKeyLen is the shortest signing key accepted, in bytes: 32
// random bytes, or a string of 32 characters or more such as the output of
// `openssl rand -base64 32`.
const MinSigningKeyLen = 32

// CommandWindow is how far a signed control command's issue time may lie
// from a worker's clock, either way, for the worker to act on it: a
// command replayed later than that is refused, and one replayed sooner is
// refused by its request id. Controllers' and workers' clocks must agree
// to well within it (NTP does).
const CommandWindow = time.Minute

// ErrSignatureInvalid is matched by the error of a message refused for its
// signature: missing, made with a key the verifier does not hold, not
// matching the message, or a command replayed.
var ErrSignatureInvalid = errors.New("signature invalid")

// sigVersion starts every signature: the scheme, HMAC-SHA256 over the
// message's stemtype AppendSigningBytes.
const sigVersion = "s1"

// SigningKeys are the keys that sign and verify task envelopes, control
// commands and revoke records (HMAC-SHA256). The first key signs; every
// key verifies, so that keys rotate without a flag day: add the new key
// after the old one everywhere, then put it first (producers now sign with
// it), then, once nothing signed with the old key is left (delayed tasks,
// revoke records until they expire), remove the old one.
//
// Give the same keys to ClientConfig, ControllerConfig and WorkerConfig
// of a deployment. A signature names its key by a key id (the first 8 hex
// digits of HMAC-SHA256(key, "stem key id")), so a verifier tries only that
// key. The keys themselves never appear in any output: String, GoString
// and LogValue show the key ids alone.
//
// A SigningKeys is immutable and safe for concurrent use.
type SigningKeys struct {
	keys []*signingKey
}

type signingKey struct {
	id    string
	macs  sync.Pool // of hash.Hash: HMAC-SHA256 with the key
	bytes []byte
}

// NewSigningKeys returns the keys, the first one signing. A key is its
// string's bytes; each must be at least MinSigningKeyLen bytes long, with
// at least 8 distinct bytes, and no key may be given twice. Errors name a
// key by its position, never by its value.
func NewSigningKeys(keys ...string) (*SigningKeys, error) {
	if len(keys) == 0 {
		return nil, errors.New("stem: signing keys: no key")
	}
	k := &SigningKeys{}
	seen := map[string]int{}
	for i, s := range keys {
		if err := checkKey(s); err != nil {
			return nil, fmt.Errorf("stem: signing key %d of %d: %w", i+1, len(keys), err)
		}
		if j, ok := seen[s]; ok {
			return nil, fmt.Errorf("stem: signing key %d of %d repeats key %d", i+1, len(keys), j+1)
		}
		seen[s] = i
		key := &signingKey{bytes: []byte(s)}
		mac := hmac.New(sha256.New, key.bytes)
		mac.Write([]byte("stem key id"))
		key.id = hex.EncodeToString(mac.Sum(nil))[:8]
		key.macs.New = func() any { return hmac.New(sha256.New, key.bytes) }
		k.keys = append(k.keys, key)
	}
	return k, nil
}

// checkKey refuses a key too short or too uniform to be a secret.
func checkKey(s string) error {
	if len(s) < MinSigningKeyLen {
		return fmt.Errorf("%d bytes, want at least %d (make one with `openssl rand -base64 32`)", len(s), MinSigningKeyLen)
	}
	var distinct [256]bool
	n := 0
	for i := 0; i < len(s); i++ {
		if !distinct[s[i]] {
			distinct[s[i]] = true
			n++
		}
	}
	if n < 8 {
		return fmt.Errorf("only %d distinct bytes: not a random key (make one with `openssl rand -base64 32`)", n)
	}
	return nil
}

// ParseSigningKeys parses a comma-separated list of keys, as in
// STEM_SIGNING_KEY: the first one signs. White space around each key is
// dropped; an empty item is an error.
func ParseSigningKeys(list string) (*SigningKeys, error) {
	items := strings.Split(list, ",")
	for i, it := range items {
		items[i] = strings.TrimSpace(it)
		if items[i] == "" {
			return nil, fmt.Errorf("stem: signing key %d of %d is empty", i+1, len(items))
		}
	}
	return NewSigningKeys(items...)
}

// ReadSigningKeyFile reads the keys of a key file, as
// STEM_SIGNING_KEY_FILE names: one key a line, the first one signing;
// white space around each line, blank lines and lines starting with # are
// dropped. Errors name the file and a key's line, never a key.
func ReadSigningKeyFile(path string) (*SigningKeys, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("stem: signing key file: %w", err)
	}
	var keys []string
	var lines []int
	for i, line := range bytes.Split(data, []byte("\n")) {
		s := strings.TrimSpace(string(line))
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		keys, lines = append(keys, s), append(lines, i+1)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("stem: signing key file %s holds no key", path)
	}
	for i, s := range keys {
		if err := checkKey(s); err != nil {
			return nil, fmt.Errorf("stem: signing key file %s, line %d: %w", path, lines[i], err)
		}
	}
	k, err := NewSigningKeys(keys...)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return k, nil
}

// IDs returns the keys' ids, the signing key's first.
func (k *SigningKeys) IDs() []string {
	ids := make([]string, len(k.keys))
	for i, key := range k.keys {
		ids[i] = key.id
	}
	return ids
}

// String describes the keys by their ids, never their values.
func (k *SigningKeys) String() string {
	if k == nil {
		return "SigningKeys(none)"
	}
	return "SigningKeys(" + strings.Join(k.IDs(), ",") + ")"
}

// GoString is String, so that %#v shows no key either.
func (k *SigningKeys) GoString() string { return k.String() }

// LogValue logs the key ids alone.
func (k *SigningKeys) LogValue() slog.Value { return slog.StringValue(k.String()) }

// sign returns the signature of msg with the first key.
func (k *SigningKeys) sign(msg []byte) string {
	key := k.keys[0]
	var sum [sha256.Size]byte
	return sigVersion + "." + key.id + "." + base64.RawURLEncoding.EncodeToString(key.mac(msg, sum[:0]))
}

// verify checks sig against msg; the error matches ErrSignatureInvalid and
// says why.
func (k *SigningKeys) verify(sig string, msg []byte) error {
	if sig == "" {
		return fmt.Errorf("%w: not signed", ErrSignatureInvalid)
	}
	version, rest, ok1 := strings.Cut(sig, ".")
	id, enc, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || version != sigVersion {
		return fmt.Errorf("%w: not a signature of this version of stem", ErrSignatureInvalid)
	}
	got, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil || len(got) != sha256.Size {
		return fmt.Errorf("%w: malformed signature", ErrSignatureInvalid)
	}
	held := false
	var sum [sha256.Size]byte
	for _, key := range k.keys {
		if key.id != id {
			continue
		}
		held = true
		if hmac.Equal(key.mac(msg, sum[:0]), got) {
			return nil
		}
	}
	if !held {
		return fmt.Errorf("%w: signed with key id %s, which is not among this process's keys (%s)", ErrSignatureInvalid, id, strings.Join(k.IDs(), ","))
	}
	return fmt.Errorf("%w: does not match the message (altered, or signed with another key)", ErrSignatureInvalid)
}

// mac appends HMAC-SHA256(key, msg) to dst.
func (key *signingKey) mac(msg, dst []byte) []byte {
	h := key.macs.Get().(hash.Hash)
	h.Reset()
	h.Write(msg)
	dst = h.Sum(dst)
	key.macs.Put(h)
	return dst
}

// SignEnvelope sets e.Sig to the signature of e's other fields.
func (k *SigningKeys) SignEnvelope(e *stemtype.Envelope) {
	e.Sig = k.sign(e.AppendSigningBytes(nil))
}

// VerifyEnvelope reports whether e.Sig signs e; the error matches
// ErrSignatureInvalid.
func (k *SigningKeys) VerifyEnvelope(e *stemtype.Envelope) error {
	return k.verify(e.Sig, e.AppendSigningBytes(nil))
}

// SignCommand sets c.Sig to the signature of c's other fields by a
// controller of namespace. Set c.IssuedAt first: a worker refuses a
// command issued outside CommandWindow.
func (k *SigningKeys) SignCommand(c *stemtype.ControlCommand, namespace string) {
	c.Sig = k.sign(c.AppendSigningBytes(nil, namespace))
}

// VerifyCommand reports whether c.Sig signs c for namespace; the error
// matches ErrSignatureInvalid. It does not look at the issue time.
func (k *SigningKeys) VerifyCommand(c *stemtype.ControlCommand, namespace string) error {
	return k.verify(c.Sig, c.AppendSigningBytes(nil, namespace))
}

// SignRevoke sets r.Sig to the signature of r's fields but Version.
func (k *SigningKeys) SignRevoke(r *stemtype.RevokeRecord) {
	r.Sig = k.sign(r.AppendSigningBytes(nil))
}

// VerifyRevoke reports whether r.Sig signs r; the error matches
// ErrSignatureInvalid.
func (k *SigningKeys) VerifyRevoke(r *stemtype.RevokeRecord) error {
	return k.verify(r.Sig, r.AppendSigningBytes(nil))
}
