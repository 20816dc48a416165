package stem

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stem-go/stem/internal/jobs"
	"github.com/stem-go/stem/internal/settle"
	"github.com/stem-go/stem/stemtype"
)

// workerSigning is a worker's side of signed messages
// (WorkerConfig.SigningKeys): it verifies control commands, task envelopes
// and revoke records, refuses replayed commands, and counts and reports
// what it refused. Without keys it checks nothing.
type workerSigning struct {
	keys     *SigningKeys
	rejected atomic.Int64 // commands, tasks and records refused

	mu   sync.Mutex
	seen seenRequests
	// reported holds the records already reported, so that a bad record
	// read again by every re-sync is logged and counted once.
	reported map[string]bool
}

// maxReported bounds workerSigning.reported: past it, the set starts
// over (a record is then reported once more).
const maxReported = 10_000

// errReplayed marks a signed command refused because its request id was
// seen before: the worker answered it then, so it does not answer again.
var errReplayed = fmt.Errorf("%w: request id seen before (a replayed command)", ErrSignatureInvalid)

// checkCommand reports why cmd must not be acted on, or nil: without keys
// always nil; with keys, a command that is not signed with one of them for
// the worker's namespace, that was issued more than CommandWindow away
// from now, or whose request id was seen before. The error matches
// ErrSignatureInvalid; a replay's matches errReplayed too.
func (w *Worker) checkCommand(cmd *stemtype.ControlCommand, now time.Time) error {
	s := &w.sig
	if s.keys == nil {
		return nil
	}
	if err := s.keys.VerifyCommand(cmd, w.cfg.Namespace); err != nil {
		return err
	}
	if d := now.Sub(cmd.IssuedAt); d > CommandWindow || d < -CommandWindow {
		return fmt.Errorf("%w: command issued at %s, %s from this worker's clock, outside the %s window (a replay, or clocks that disagree)",
			ErrSignatureInvalid, cmd.IssuedAt.UTC().Format(time.RFC3339), d.Round(time.Second), CommandWindow)
	}
	s.mu.Lock()
	fresh := s.seen.add(cmd.RequestID, cmd.IssuedAt.Add(CommandWindow), now)
	s.mu.Unlock()
	if !fresh {
		return errReplayed
	}
	return nil
}

// refuseCommand logs and counts a command checkCommand refused and
// answers it with the error, unless it is a replay (answered the first
// time).
func (w *Worker) refuseCommand(cmd *stemtype.ControlCommand, err error) (answer bool) {
	w.sig.rejected.Add(1)
	w.log.Warn("control command refused: "+ErrSignatureInvalid.Error(), "type", cmd.Type, "request_id", cmd.RequestID, "err", err)
	return !errors.Is(err, errReplayed)
}

// checkEnvelope reports why the task of env must not run, or nil: without
// keys always nil.
func (w *Worker) checkEnvelope(env *stemtype.Envelope) error {
	if w.sig.keys == nil {
		return nil
	}
	return w.sig.keys.VerifyEnvelope(env)
}

// deadLetterForged dead-letters a delivery whose envelope's signature
// failed (err): the task never runs. No result is recorded: the envelope
// may carry the id of a genuine task, whose outcome it must not decide.
func (w *Worker) deadLetterForged(j *jobs.Job, err error) {
	env := j.Env()
	w.sig.rejected.Add(1)
	w.log.Error("dead-lettering task: "+ErrSignatureInvalid.Error(), "task_id", env.ID, "task", env.Task,
		"queue", j.D.Queue, "err", err)
	w.settle(j, nil, settle.DeadLetter, nil, err.Error())
}

// signRetry signs next, the envelope of a task's next attempt, with the
// worker's first key; without keys it drops the signature of the attempt
// before, which no longer matches.
func (w *Worker) signRetry(next *stemtype.Envelope) {
	if w.sig.keys == nil {
		next.Sig = ""
		return
	}
	w.sig.keys.SignEnvelope(next)
}

// verifiedRecords returns the records of recs whose signature holds (all of
// them without keys) and the targets (RevokeRecord.Target) of the others,
// which it logs as coming from source and counts, once per record.
func (w *Worker) verifiedRecords(recs []stemtype.RevokeRecord, source string) (ok []stemtype.RevokeRecord, rejected []string) {
	if w.sig.keys == nil {
		return recs, nil
	}
	ok = recs[:0:0]
	for i := range recs {
		if err := w.verifyRecord(&recs[i], source); err != nil {
			rejected = append(rejected, recs[i].Target())
			continue
		}
		ok = append(ok, recs[i])
	}
	return ok, rejected
}

// verifyRecord checks r's signature; a failure is logged as coming from
// source and counted, once per record.
func (w *Worker) verifyRecord(r *stemtype.RevokeRecord, source string) error {
	s := &w.sig
	if s.keys == nil {
		return nil
	}
	err := s.keys.VerifyRevoke(r)
	if err == nil {
		return nil
	}
	key := source + "\x00" + r.TaskID + "\x00" + strconv.FormatInt(r.Version, 10) + "\x00" + r.Sig
	s.mu.Lock()
	if s.reported == nil || len(s.reported) >= maxReported {
		s.reported = map[string]bool{}
	}
	first := !s.reported[key]
	s.reported[key] = true
	s.mu.Unlock()
	if first {
		s.rejected.Add(1)
		w.log.Warn("revoke record ignored: "+ErrSignatureInvalid.Error(), "task_id", r.Target(), "version", r.Version,
			"requested_by", r.RequestedBy, "source", source, "err", err)
	}
	return err
}

// seenRequests remembers the request ids of the commands a worker acted
// on, each until the command's window closes (a later replay is refused
// by its issue time), and at most maxSeenRequests of them (the oldest
// are forgotten first).
type seenRequests struct {
	until map[string]time.Time
	order []seenRequest // in the order added
}

type seenRequest struct {
	id    string
	until time.Time
}

// maxSeenRequests bounds seenRequests: far more signed commands than a
// fleet's operators send in a CommandWindow.
const maxSeenRequests = 100_000

// add records id until until and reports whether it was new.
func (s *seenRequests) add(id string, until, now time.Time) bool {
	for len(s.order) > 0 && (len(s.order) >= maxSeenRequests || !now.Before(s.order[0].until)) {
		delete(s.until, s.order[0].id)
		s.order = s.order[1:]
	}
	if _, ok := s.until[id]; ok {
		return false
	}
	if s.until == nil {
		s.until = map[string]time.Time{}
	}
	s.until[id] = until
	s.order = append(s.order, seenRequest{id: id, until: until})
	return true
}
