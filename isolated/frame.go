package isolated

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// A frame is a 4-byte big-endian unsigned payload length followed by that
// many bytes of payload (one JSON object, see docs/isolated-protocol.md).

const (
	// frameHeader is the size of a frame's length prefix.
	frameHeader = 4
	// DefaultMaxFrame is the largest frame payload either side accepts
	// unless PoolConfig.MaxFrame says otherwise: 16 MiB.
	DefaultMaxFrame = 16 << 20
	// maxFrameLimit is the largest MaxFrame a pool accepts (1 GiB): the
	// length prefix could say 4 GiB, which no one should allocate on the
	// word of a child.
	maxFrameLimit = 1 << 30
)

// Frame errors. The worker treats any of them, from a child, as a broken
// child: the task fails and the child is killed and replaced.
var (
	// ErrFrameTooLarge is returned for a frame whose length prefix exceeds
	// the limit; its payload is never read or allocated.
	ErrFrameTooLarge = errors.New("stem: isolated: frame too large")
	// ErrFrameTruncated is returned when the stream ends inside a frame.
	ErrFrameTruncated = errors.New("stem: isolated: truncated frame")
	// ErrFrameMalformed is returned for a frame that is not a valid
	// message: an empty payload, a payload that is not a JSON object with
	// a known type, or a message that breaks the protocol.
	ErrFrameMalformed = errors.New("stem: isolated: malformed frame")
)

// readFrame reads one frame from r and returns its payload. It returns
// io.EOF, unwrapped, when r ends cleanly before the first byte of a frame;
// ErrFrameTruncated when r ends inside one; ErrFrameTooLarge (without
// reading the payload) when the length exceeds max; ErrFrameMalformed for a
// zero length. Any other read error is returned wrapped.
func readFrame(r io.Reader, max int) ([]byte, error) {
	var hdr [frameHeader]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		switch {
		case errors.Is(err, io.EOF):
			return nil, io.EOF
		case errors.Is(err, io.ErrUnexpectedEOF):
			return nil, fmt.Errorf("%w: stream ended inside a length prefix", ErrFrameTruncated)
		}
		return nil, fmt.Errorf("stem: isolated: read frame: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	switch {
	case n == 0:
		return nil, fmt.Errorf("%w: empty payload", ErrFrameMalformed)
	case uint64(n) > uint64(max):
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, max)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: stream ended inside a %d-byte payload", ErrFrameTruncated, n)
		}
		return nil, fmt.Errorf("stem: isolated: read frame: %w", err)
	}
	return buf, nil
}

// appendFrame appends the frame of payload to dst. It fails for an empty
// payload or one longer than max.
func appendFrame(dst, payload []byte, max int) ([]byte, error) {
	if len(payload) == 0 {
		return dst, fmt.Errorf("%w: empty payload", ErrFrameMalformed)
	}
	if len(payload) > max {
		return dst, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, len(payload), max)
	}
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	return append(dst, payload...), nil
}

// writeFrame writes the frame of payload to w in one Write call, so that
// frames written under a lock never interleave.
func writeFrame(w io.Writer, payload []byte, max int) error {
	buf, err := appendFrame(make([]byte, 0, frameHeader+len(payload)), payload, max)
	if err != nil {
		return err
	}
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("stem: isolated: write frame: %w", err)
	}
	return nil
}
