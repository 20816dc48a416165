package stem

import (
	"errors"
	"fmt"

	"github.com/stem-go/stem/stemtype"
)

// DefaultMaxPayload is the default of ClientConfig.MaxPayload and
// WorkerConfig.MaxPayload: 1 MiB of JSON arguments. It is far above what a
// task's arguments need (ids, a few fields; large data belongs in a blob
// store, the task carrying its key, as Celery's guidance says too), and it
// keeps what a worker holds bounded: with the default 10 slots and 40 of
// prefetch, at most 50 MiB of arguments at once. Every broker stores
// larger messages, but slowly (a Redis or PostgreSQL round trip, a SQLite
// page chain), and one runaway producer should not fill the broker's
// memory.
const DefaultMaxPayload = 1 << 20

// ErrPayloadTooLarge is matched by the error of an enqueue whose arguments
// are larger than ClientConfig.MaxPayload, and recorded (kind
// "payload_too_large") as the failure of a task a worker refused for the
// same reason (WorkerConfig.MaxPayload).
var ErrPayloadTooLarge = errors.New("stem: task arguments too large")

// PayloadTooLargeError says which task's arguments are too large, their
// size and the limit. It matches ErrPayloadTooLarge.
type PayloadTooLargeError struct {
	Task  string
	Size  int // bytes of the arguments' JSON encoding
	Limit int // the limit in force, in bytes
}

func (e *PayloadTooLargeError) Error() string {
	return fmt.Sprintf("stem: enqueue %s: arguments are %d bytes, over the limit of %d bytes (ClientConfig.MaxPayload)",
		e.Task, e.Size, e.Limit)
}

// Is reports whether target is ErrPayloadTooLarge.
func (e *PayloadTooLargeError) Is(target error) bool { return target == ErrPayloadTooLarge }

// payloadLimit turns a MaxPayload setting into the limit in force: 0
// means none.
func payloadLimit(n int) int {
	switch {
	case n == 0:
		return DefaultMaxPayload
	case n < 0:
		return 0
	}
	return n
}

// checkPayload fails env when its arguments are over the client's limit.
func (c *Client) checkPayload(env *stemtype.Envelope) error {
	if c.maxArgs > 0 && len(env.Args) > c.maxArgs {
		return &PayloadTooLargeError{Task: env.Task, Size: len(env.Args), Limit: c.maxArgs}
	}
	return nil
}
