package stem

import (
	"errors"
	"fmt"

	"encoding/json"

	"github.com/stem-go/stem/stemtype"
)

// WorkerReply is one worker's answer to a control command with its payload
// decoded: P is stemtype.PingReply, stemtype.InspectReply,
// stemtype.StatsReply or stemtype.RevokeReply, matching the command sent.
// Read replies through Decode rather than decoding
// stemtype.ControlReply.Payload by hand.
type WorkerReply[P any] struct {
	// WorkerID is the id of the worker that answered.
	WorkerID string
	// Status is stemtype.ReplyOK when Err is nil, else stemtype.ReplyError.
	Status string
	// Payload is the decoded payload; the zero P when Err is set.
	Payload P
	// Err is why this worker's answer holds no payload: the worker's own
	// error (its message, or "error" when it sent none), or, for a reply
	// whose status is ok, a payload that is missing or does not decode as
	// P (wrapped with the "stem:" prefix). A payload never decodes silently
	// to a zero value.
	Err error
}

// Decode returns r's replies, in the order they arrived, with each payload
// decoded as P (see WorkerReply). It returns nil for a nil r. Pick P to
// match the command: stemtype.PingReply for Ping, stemtype.InspectReply for
// Inspect, stemtype.StatsReply for Stats and stemtype.RevokeReply for
// Revoke (RevokeResult.Replies); a P of another shape
// decodes what fields it shares with the payload.
func Decode[P any](r *Replies) []WorkerReply[P] {
	if r == nil {
		return nil
	}
	out := make([]WorkerReply[P], len(r.Replies))
	for i, rep := range r.Replies {
		out[i] = decodeReply[P](rep)
	}
	return out
}

// decodeReply decodes one reply's payload as P, turning a worker's error
// or a payload that does not decode into the reply's Err.
func decodeReply[P any](rep stemtype.ControlReply) WorkerReply[P] {
	wr := WorkerReply[P]{WorkerID: rep.WorkerID, Status: stemtype.ReplyError}
	switch {
	case rep.Status != stemtype.ReplyOK:
		msg := "error"
		if rep.Error != nil {
			msg = rep.Error.Message
		}
		wr.Err = errors.New(msg)
	case len(rep.Payload) == 0:
		wr.Err = fmt.Errorf("stem: worker %s: reply has no payload", rep.WorkerID)
	default:
		if err := json.Unmarshal(rep.Payload, &wr.Payload); err != nil {
			var zero P
			wr.Payload = zero
			wr.Err = fmt.Errorf("stem: worker %s: decode reply payload: %w", rep.WorkerID, err)
		} else {
			wr.Status = stemtype.ReplyOK
		}
	}
	return wr
}
