package settle_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem/internal/settle"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// putLog is a result backend that records every state it was asked to
// write, per task, and signals each Put.
type putLog struct {
	stemdriver.ResultBackend
	mu   sync.Mutex
	puts map[string][]stemtype.State
	put  chan struct{}
}

func newPutLog(r stemdriver.ResultBackend) *putLog {
	return &putLog{ResultBackend: r, puts: make(map[string][]stemtype.State), put: make(chan struct{}, 1024)}
}

func (p *putLog) Put(ctx context.Context, rs ...*stemtype.TaskResult) error {
	p.mu.Lock()
	for _, r := range rs {
		p.puts[r.ID] = append(p.puts[r.ID], r.State)
	}
	p.mu.Unlock()
	err := p.ResultBackend.Put(ctx, rs...)
	select {
	case p.put <- struct{}{}:
	default:
	}
	return err
}

func (p *putLog) of(id string) []stemtype.State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]stemtype.State(nil), p.puts[id]...)
}

// A deferred write (a task's started record) that its task's outcome
// overtakes is never written: a short task costs one result write.
func TestDeferredWriteOvertakenIsDropped(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	log := newPutLog(e.results)
	w, _ := e.writer(nil, log)
	ds := e.claim(50)
	for _, d := range ds {
		w.Queue(settle.Settlement{Result: result(d.Envelope.ID, stemtype.StateStarted), Defer: time.Hour})
	}
	for _, d := range ds {
		w.Queue(settle.Settlement{Delivery: d, Result: result(d.Envelope.ID, stemtype.StateSucceeded), Op: settle.Ack})
	}
	w.Close(ctx)
	for _, d := range ds {
		if got := log.of(d.Envelope.ID); len(got) != 1 || got[0] != stemtype.StateSucceeded {
			t.Fatalf("task %s: writes %v, want the outcome alone", d.Envelope.ID, got)
		}
		if e.held(d) {
			t.Fatalf("task %s was not acknowledged", d.Envelope.ID)
		}
	}
}

// A deferred write that nothing overtakes is written once its delay has
// passed, while the writer runs.
func TestDeferredWriteIsWrittenWhenDue(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	log := newPutLog(e.results)
	w, _ := e.writer(nil, log)
	w.Queue(settle.Settlement{Result: result("slow", stemtype.StateStarted), Defer: time.Millisecond})
	for len(log.of("slow")) == 0 {
		select {
		case <-log.put:
		case <-time.After(time.Minute):
			t.Fatal("the deferred write was not written within a minute")
		}
	}
	if r, err := e.results.Get(ctx, "slow"); err != nil || r.State != stemtype.StateStarted {
		t.Fatalf("stored %+v (%v), want started", r, err)
	}
}

// A later bare write of the task (a progress report, which carries the
// started record's fields) replaces a deferred one, which then never
// follows it; Close writes a deferred write that is still held, unless
// its task settled (Superseded).
func TestDeferredWriteReplacedAndFlushedAtClose(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	log := newPutLog(e.results)
	w, _ := e.writer(nil, log)
	var settled, open atomic.Bool
	settled.Store(true)
	w.Queue(settle.Settlement{Result: result("reported", stemtype.StateStarted), Defer: time.Hour})
	p := result("reported", stemtype.StateStarted)
	p.Progress = &stemtype.Progress{Percent: 50}
	w.Queue(settle.Settlement{Result: p})
	w.Queue(settle.Settlement{Result: result("held", stemtype.StateStarted), Defer: time.Hour, Superseded: &open})
	w.Queue(settle.Settlement{Result: result("settled", stemtype.StateStarted), Defer: time.Hour, Superseded: &settled})
	w.Close(ctx)
	if got := log.of("reported"); len(got) != 1 {
		t.Fatalf("task reported: writes %v, want the progress report alone", got)
	}
	if r, err := e.results.Get(ctx, "reported"); err != nil || r.Progress == nil || r.Progress.Percent != 50 {
		t.Fatalf("task reported: stored %+v (%v), want the progress report", r, err)
	}
	if r, err := e.results.Get(ctx, "held"); err != nil || r.State != stemtype.StateStarted {
		t.Fatalf("task held: stored %+v (%v), want its deferred write, flushed at close", r, err)
	}
	if got := log.of("settled"); len(got) != 0 {
		t.Fatalf("task settled: writes %v, want none (superseded)", got)
	}
}
