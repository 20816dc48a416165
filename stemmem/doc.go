// Package stemmem implements every stem backend role in process memory: a
// broker, a result backend, a revoke store and a control transport, all
// served by one Hub.
//
// A Hub plays the part of one server. Values opened from the same Hub with
// the same namespace share data, as two connections to one Redis would;
// values of different namespaces never see each other's data. Closing a
// value makes its own operations return stemdriver.ErrClosed and affects
// nothing else.
//
// The broker keeps each queue ordered by Envelope.Priority (higher first),
// then by publish order; a delayed message joins the end of its queue when
// it falls due, so delayed messages come in order of NotBefore. Every
// envelope given to Publish is stored as a message of its own, so one
// published twice is delivered twice. Claim with a Wait blocks without polling: it wakes
// when a message is published, released or retried, and at the nearest
// NotBefore or lease deadline. A claimed message carries a receipt unique to
// that claim; once its lease expired and another consumer re-claimed it, the
// old receipt gets stemdriver.ErrLeaseLost, as does a receipt already
// acknowledged, retried, released or dead-lettered. Until a re-claim, the
// holder of an expired lease may still extend, ack or retry it. Messages are
// stored as their JSON encoding, so callers may reuse an envelope after
// Publish. Dead-lettered messages are kept in memory; Hub.DeadLetters lists
// them.
//
// Limits, stated honestly:
//   - Nothing survives the process. The package is meant for tests, examples
//     and single-process demos (the memory:// backend).
//   - Nothing is shared between processes: an isolated task's child process
//     or a CLI in another process cannot reach a Hub.
//   - Results are kept until the Hub is dropped: there is no retention
//     period. Control replies expire a minute after their last write, and
//     that clean-up happens lazily on the next Reply or Replies call.
//   - Control delivery is best effort: a subscriber whose buffer is full
//     (256 messages) misses the message, and a warning is logged.
//   - A namespace's (empty) structures are kept for the Hub's life once
//     opened; a Hub is not meant to serve an unbounded stream of namespaces.
//   - Time is the wall clock of the process; there is no injected clock.
package stemmem
