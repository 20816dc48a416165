package stem_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// A second worker with the id of a live one refuses to start, naming the
// live worker's host and pid; the first keeps working and stays listed.
func TestWorkerRefusesLiveID(t *testing.T) {
	e := newEnv(t)
	e.reg.MustAdd(stem.Task{Name: "echo", Run: func(*stem.TaskContext, stem.Args) (any, error) { return "ok", nil }})
	e.startWorker(stem.WorkerConfig{ID: "dup"})

	second, err := stem.NewWorker(stem.WorkerConfig{ID: "dup", Namespace: e.ns, Registry: e.reg, Broker: e.broker,
		Results: e.results, Revokes: e.revokes, Control: e.control, Logger: quiet(), ClaimWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- second.Run(ctx) }()
	select {
	case err = <-done:
	case <-second.Ready():
		cancel()
		<-done
		t.Fatal("a second worker with the id of a live one started")
	}
	if !errors.Is(err, stemdriver.ErrWorkerIDTaken) {
		t.Fatalf("second Run = %v, want an error matching ErrWorkerIDTaken", err)
	}
	host, _ := os.Hostname()
	for _, want := range []string{"worker dup", "host " + host, "pid " + strconv.Itoa(os.Getpid())} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("second Run error %q does not name %q", err, want)
		}
	}

	// The first worker is still announced (the refused one withdrew
	// nothing), answers alone and runs tasks.
	ws, err := e.control.Workers(ctx)
	if err != nil || len(ws) != 1 || ws[0].ID != "dup" {
		t.Fatalf("workers after the refusal: %+v (%v), want the first dup", ws, err)
	}
	r, err := e.controller().Ping(ctx, stem.Target{Workers: []string{"dup"}, Timeout: 5 * time.Second})
	if err != nil || len(r.Replies) != 1 || len(r.Missing) != 0 {
		t.Fatalf("ping dup after the refusal: %+v (%v)", r, err)
	}
	if res := e.wait(e.enqueue("echo", nil, stem.EnqueueOptions{})); res.State != stemtype.StateSucceeded {
		t.Fatalf("task after the refusal: %+v", res)
	}
}

// A running worker whose id was taken by another instance (its own
// announcement lost, as after a network partition longer than its ttl)
// says so in its log with an error.
func TestWorkerLogsIDTakenWhileRunning(t *testing.T) {
	e := newEnv(t)
	logged := make(chan string, 16)
	e.startWorker(stem.WorkerConfig{ID: "dup", PresenceInterval: 10 * time.Millisecond,
		Logger: slog.New(&errorSink{ch: logged})})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws, err := e.control.Workers(ctx)
	if err != nil || len(ws) != 1 {
		t.Fatalf("workers: %+v (%v)", ws, err)
	}
	if ws[0].Instance == "" {
		t.Fatal("the worker announced no instance")
	}
	if err := e.control.Withdraw(ctx, "dup", ws[0].Instance); err != nil {
		t.Fatal(err)
	}
	intruder := stemtype.WorkerInfo{ID: "dup", Host: "elsewhere", PID: 7, Instance: "intruder"}
	if err := e.control.Announce(ctx, intruder, time.Minute); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case msg := <-logged:
			if strings.Contains(msg, "host elsewhere pid 7") {
				return
			}
		case <-ctx.Done():
			t.Fatal("the worker logged no error naming the instance that took its id")
		}
	}
}

// errorSink is a slog handler that sends each error record, with its
// attributes, to ch (dropping it when ch is full).
type errorSink struct{ ch chan string }

func (h *errorSink) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelError }
func (h *errorSink) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.Key + "=" + a.Value.String())
		return true
	})
	select {
	case h.ch <- b.String():
	default:
	}
	return nil
}
func (h *errorSink) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *errorSink) WithGroup(string) slog.Handler      { return h }
