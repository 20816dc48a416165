package stemmem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// resultSpace is the result data of one namespace. Results are kept as
// their JSON encoding, so what callers get and give are always copies.
type resultSpace struct {
	mu   sync.RWMutex
	byID map[string][]byte
	// final holds the ids whose stored state is final, so that a write
	// need not decode the stored JSON to know it must be skipped. It is
	// made by the first final write.
	final map[string]struct{}
}

// store stores raw as the result of id unless the stored one is final, and
// reports whether it did. The caller holds mu for writing.
func (s *resultSpace) store(id string, state stemtype.State, raw []byte) bool {
	if _, ok := s.final[id]; ok {
		return false
	}
	s.byID[id] = raw
	if state.Final() {
		if s.final == nil {
			s.final = make(map[string]struct{})
		}
		s.final[id] = struct{}{}
	}
	return true
}

// results is one result backend value on a resultSpace.
type results struct {
	space     *resultSpace
	closed    chan struct{}
	closeOnce sync.Once
}

var _ stemdriver.ResultBackend = (*results)(nil)

// Put stores every result, replacing the stored record of the same id
// unless that one's state is final (the write is then skipped). It encodes
// all of them before storing any.
func (r *results) Put(ctx context.Context, rs ...*stemtype.TaskResult) error {
	if isClosed(r.closed) {
		return fmt.Errorf("stem: memory results put: %w", stemdriver.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	raws := make([][]byte, len(rs))
	for i, res := range rs {
		if res == nil || res.ID == "" {
			return errors.New("stem: memory results put: result is nil or has no id")
		}
		raw, err := json.Marshal(res)
		if err != nil {
			return fmt.Errorf("stem: memory results put: encode result %s: %w", res.ID, err)
		}
		raws[i] = raw
	}
	r.space.mu.Lock()
	defer r.space.mu.Unlock()
	for i, res := range rs {
		r.space.store(res.ID, res.State, raws[i])
	}
	return nil
}

// PutIfState stores res only while the stored result of its id is in one
// of states, and never over a final state; it implements
// stemdriver.ConditionalPutter.
func (r *results) PutIfState(ctx context.Context, res *stemtype.TaskResult, states ...stemtype.State) (bool, error) {
	if isClosed(r.closed) {
		return false, fmt.Errorf("stem: memory results put: %w", stemdriver.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if res == nil || res.ID == "" {
		return false, errors.New("stem: memory results put: result is nil or has no id")
	}
	raw, err := json.Marshal(res)
	if err != nil {
		return false, fmt.Errorf("stem: memory results put: encode result %s: %w", res.ID, err)
	}
	r.space.mu.Lock()
	defer r.space.mu.Unlock()
	cur, ok := r.space.byID[res.ID]
	if !ok {
		return false, nil
	}
	var stored struct {
		State stemtype.State `json:"state"`
	}
	if err := json.Unmarshal(cur, &stored); err != nil || !slices.Contains(states, stored.State) {
		return false, nil
	}
	return r.space.store(res.ID, res.State, raw), nil
}

// Get returns a copy of the stored result of id, or an error matching
// stemdriver.ErrNotFound.
func (r *results) Get(ctx context.Context, id string) (*stemtype.TaskResult, error) {
	if isClosed(r.closed) {
		return nil, fmt.Errorf("stem: memory results get: %w", stemdriver.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.space.mu.RLock()
	raw, ok := r.space.byID[id]
	r.space.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("stem: memory results get %s: %w", id, stemdriver.ErrNotFound)
	}
	var res stemtype.TaskResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("stem: memory results get %s: decode: %w", id, err)
	}
	return &res, nil
}

// GetMany returns copies of the stored results of ids, in order, nil for
// an id with none.
func (r *results) GetMany(ctx context.Context, ids ...string) ([]*stemtype.TaskResult, error) {
	if isClosed(r.closed) {
		return nil, fmt.Errorf("stem: memory results get: %w", stemdriver.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	raws := make([][]byte, len(ids))
	r.space.mu.RLock()
	for i, id := range ids {
		raws[i] = r.space.byID[id]
	}
	r.space.mu.RUnlock()
	out := make([]*stemtype.TaskResult, len(ids))
	for i, raw := range raws {
		if raw == nil {
			continue
		}
		var res stemtype.TaskResult
		if err := json.Unmarshal(raw, &res); err != nil {
			return nil, fmt.Errorf("stem: memory results get %s: decode: %w", ids[i], err)
		}
		out[i] = &res
	}
	return out, nil
}

// Close closes r; other values of the same Hub are unaffected. Close is
// idempotent.
func (r *results) Close() error {
	r.closeOnce.Do(func() { close(r.closed) })
	return nil
}
