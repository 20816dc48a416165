package stem_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
)

// gatedRelease holds its first Release until gate is closed (or its
// context ends), reporting meanwhile in pending that it is under way.
type gatedRelease struct {
	stemdriver.Broker
	once    sync.Once
	gate    chan struct{}
	pending atomic.Bool
}

func (b *gatedRelease) Release(ctx context.Context, ds ...stemdriver.Delivery) error {
	first := false
	b.once.Do(func() { first = true })
	if first {
		b.pending.Store(true)
		defer b.pending.Store(false)
		select {
		case <-b.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return b.Broker.Release(ctx, ds...)
}

// withdrawWatch runs onWithdraw when the worker withdraws its presence,
// the last thing Run does.
type withdrawWatch struct {
	stemdriver.ControlTransport
	onWithdraw func()
}

func (c *withdrawWatch) Withdraw(ctx context.Context, id, instance string) error {
	c.onWithdraw()
	return c.ControlTransport.Withdraw(ctx, id, instance)
}

// msgWatch is a slog handler that calls on with every record's message.
type msgWatch struct{ on func(string) }

func (h *msgWatch) Enabled(context.Context, slog.Level) bool { return true }
func (h *msgWatch) Handle(_ context.Context, r slog.Record) error {
	h.on(r.Message)
	return nil
}
func (h *msgWatch) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *msgWatch) WithGroup(string) slog.Handler      { return h }

// A task's release at shutdown that is still under way when the grace
// periods are over (its runner settled it, outside the result writer,
// and the broker is slow to answer) is waited for before Run returns: a
// process exits once Run returned, and the task would then wait out its
// whole lease instead of going back at once.
func TestRunWaitsForReleaseUnderWay(t *testing.T) {
	e := newEnv(t)
	running := make(chan struct{})
	stem.Register(e.reg, "polite", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		close(running)
		<-tc.Done()
		return nil, context.Cause(tc)
	}, stem.TaskOptions{})
	id := e.enqueue("polite", nil, stem.EnqueueOptions{})
	b := &gatedRelease{Broker: e.broker, gate: make(chan struct{})}
	e.broker = b
	var open sync.Once
	openGate := func() { open.Do(func() { close(b.gate) }) }
	var returnedEarly atomic.Bool
	ctl := &withdrawWatch{ControlTransport: e.control, onWithdraw: func() {
		returnedEarly.Store(b.pending.Load())
		openGate()
	}}
	log := slog.New(&msgWatch{on: func(msg string) {
		if strings.Contains(msg, "waiting for task releases under way") {
			openGate()
		}
	}})
	_, stop := e.startWorker(stem.WorkerConfig{Control: ctl, Logger: log, Lease: 30 * time.Second,
		ShutdownTimeout: 20 * time.Millisecond})
	<-running
	stop()
	if returnedEarly.Load() {
		t.Fatal("Run returned while the release of its task was still under way")
	}
	ds, err := e.broker.Claim(context.Background(), stemdriver.ClaimRequest{Queues: []string{"default"},
		Consumer: "next", Max: 1, Lease: time.Second, Wait: time.Second})
	if err != nil || len(ds) != 1 || ds[0].Envelope.ID != id {
		t.Fatalf("the task is not claimable right after Run returned: %v %v", ds, err)
	}
}
