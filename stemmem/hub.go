package stemmem

import (
	"log/slog"
	"sync"
	"time"

	"github.com/stem-go/stem/stemdriver"
)

// Hub is one in-process stem "server": it holds the queues, results, revoke
// records and control state of every namespace opened from it. It is safe
// for concurrent use. The zero value is not usable; call New.
type Hub struct {
	mu      sync.Mutex
	brokers map[string]*brokerSpace
	results map[string]*resultSpace
	control map[string]*controlSpace
	revokes *revokeSpace
}

// New returns an empty Hub.
func New() *Hub {
	return &Hub{
		brokers: make(map[string]*brokerSpace),
		results: make(map[string]*resultSpace),
		control: make(map[string]*controlSpace),
		revokes: newRevokeSpace(),
	}
}

// Broker opens a broker on the namespace opts.Namespace of h.
func (h *Hub) Broker(opts stemdriver.Options) stemdriver.Broker {
	return &broker{space: h.brokerSpace(opts.Namespace), logger: loggerOf(opts), closed: make(chan struct{})}
}

// Results opens a result backend on the namespace opts.Namespace of h.
// Results never expire.
func (h *Hub) Results(opts stemdriver.Options) stemdriver.ResultBackend {
	h.mu.Lock()
	s := h.results[opts.Namespace]
	if s == nil {
		s = &resultSpace{byID: make(map[string][]byte)}
		h.results[opts.Namespace] = s
	}
	h.mu.Unlock()
	return &results{space: s, closed: make(chan struct{})}
}

// Revokes opens the revoke store of h. Records carry their namespace, so one
// store serves every namespace.
func (h *Hub) Revokes() stemdriver.RevokeStore {
	return &revokes{space: h.revokes, closed: make(chan struct{})}
}

// Control opens a control transport on the namespace opts.Namespace of h.
func (h *Hub) Control(opts stemdriver.Options) stemdriver.ControlTransport {
	h.mu.Lock()
	s := h.control[opts.Namespace]
	if s == nil {
		s = newControlSpace(opts.Namespace)
		h.control[opts.Namespace] = s
	}
	h.mu.Unlock()
	return &control{space: s, logger: loggerOf(opts), closed: make(chan struct{}), subs: make(map[*subscription]struct{})}
}

// DeadLetter is a message that a consumer dead-lettered, as the broker kept
// it.
type DeadLetter struct {
	// Queue is the queue the message was removed from.
	Queue string
	// Raw is the message as it was stored.
	Raw []byte
	// Reason is the reason given to DeadLetter.
	Reason string
	// At is when the message was dead-lettered.
	At time.Time
}

// DeadLetters returns the messages dead-lettered from queue in namespace,
// oldest first. It is meant for tests; the returned values are copies.
func (h *Hub) DeadLetters(namespace, queue string) []DeadLetter {
	s := h.brokerSpace(namespace)
	s.mu.Lock()
	defer s.mu.Unlock()
	list := s.dead[queue]
	out := make([]DeadLetter, len(list))
	for i, dl := range list {
		dl.Raw = append([]byte(nil), dl.Raw...)
		out[i] = dl
	}
	return out
}

func (h *Hub) brokerSpace(namespace string) *brokerSpace {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.brokers[namespace]
	if s == nil {
		s = newBrokerSpace()
		h.brokers[namespace] = s
	}
	return s
}

func loggerOf(opts stemdriver.Options) *slog.Logger {
	if opts.Logger != nil {
		return opts.Logger
	}
	return slog.Default()
}

// isClosed reports whether the channel closed has been closed.
func isClosed(closed chan struct{}) bool {
	select {
	case <-closed:
		return true
	default:
		return false
	}
}
