package stemdriver

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// EncodeEnvelopes validates each envelope and encodes it as JSON, the form
// every broker stores, so that brokers agree on what they refuse. An error
// names the envelope; the caller adds its own prefix.
func EncodeEnvelopes(envs []*stemtype.Envelope) ([][]byte, error) {
	raws := make([][]byte, len(envs))
	for i, env := range envs {
		if err := env.Validate(); err != nil {
			return nil, err
		}
		raw, err := env.AppendJSON(nil)
		if err != nil {
			return nil, fmt.Errorf("encode envelope %s: %w", env.ID, err)
		}
		raws[i] = raw
	}
	return raws, nil
}

// PrepareAnnounce checks an Announce's info and ttl and completes info as
// every ControlTransport stores it: a zero LastSeen becomes now (UTC) and
// an empty Namespace the transport's namespace. It returns the completed
// info and its JSON encoding; an error says what is wrong, and the caller
// adds its own prefix.
func PrepareAnnounce(info stemtype.WorkerInfo, ttl time.Duration, namespace string) (stemtype.WorkerInfo, []byte, error) {
	if info.ID == "" {
		return info, nil, errors.New("worker info has no id")
	}
	if ttl <= 0 {
		return info, nil, fmt.Errorf("worker %q: ttl is %v, want a positive duration", info.ID, ttl)
	}
	if info.LastSeen.IsZero() {
		info.LastSeen = time.Now().UTC()
	}
	if info.Namespace == "" {
		info.Namespace = namespace
	}
	raw, err := json.Marshal(info)
	if err != nil {
		return info, nil, fmt.Errorf("worker %q: encode: %w", info.ID, err)
	}
	return info, raw, nil
}
