package stemtype

// DecodeEnvelopeFastForTest reports whether DecodeEnvelope's fast path
// reads raw.
func DecodeEnvelopeFastForTest(raw []byte) bool {
	var e Envelope
	return decodeEnvelopeFast(raw, &e)
}
