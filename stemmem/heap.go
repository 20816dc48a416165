package stemmem

import "container/heap"

// msgHeap is a binary heap of messages ordered by less. Every message is in
// at most one heap at a time, so one index field on the message serves all
// of them and lets heap.Remove and heap.Fix find it.
type msgHeap struct {
	ms   []*message
	less func(a, b *message) bool
}

var _ heap.Interface = (*msgHeap)(nil)

func (h *msgHeap) Len() int           { return len(h.ms) }
func (h *msgHeap) Less(i, j int) bool { return h.less(h.ms[i], h.ms[j]) }

func (h *msgHeap) Swap(i, j int) {
	h.ms[i], h.ms[j] = h.ms[j], h.ms[i]
	h.ms[i].index = i
	h.ms[j].index = j
}

func (h *msgHeap) Push(x any) {
	m := x.(*message)
	m.index = len(h.ms)
	h.ms = append(h.ms, m)
}

func (h *msgHeap) Pop() any {
	n := len(h.ms) - 1
	m := h.ms[n]
	h.ms[n] = nil
	h.ms = h.ms[:n]
	m.index = -1
	return m
}

// peek returns the first message of h, or nil when h is empty.
func (h *msgHeap) peek() *message {
	if len(h.ms) == 0 {
		return nil
	}
	return h.ms[0]
}

// readyFirst orders ready messages: higher priority first, then queue
// order (publish order; a delayed message takes its place when it falls
// due, so delayed ones follow their NotBefore order).
func readyFirst(a, b *message) bool {
	if a.priority != b.priority {
		return a.priority > b.priority
	}
	return a.seq < b.seq
}

// dueFirst orders delayed messages by NotBefore, then publish order.
func dueFirst(a, b *message) bool {
	if !a.notBefore.Equal(b.notBefore) {
		return a.notBefore.Before(b.notBefore)
	}
	return a.seq < b.seq
}

// expiresFirst orders leased messages by lease deadline.
func expiresFirst(a, b *message) bool {
	if !a.leaseUntil.Equal(b.leaseUntil) {
		return a.leaseUntil.Before(b.leaseUntil)
	}
	return a.seq < b.seq
}
