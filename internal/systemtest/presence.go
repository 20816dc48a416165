package systemtest

import (
	"context"
	"errors"
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
func testWorkerRefusesLiveID(t *testing.T, h Harness) {
	d := open(t, h)
	stem.Register(d.reg, "echo", func(*stem.TaskContext, stem.Args) (any, error) { return "ok", nil }, stem.TaskOptions{})
	d.startWorker(stem.WorkerConfig{ID: "dup"})

	second := d.newWorker(stem.WorkerConfig{ID: "dup"})
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- second.Run(ctx) }()
	var err error
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
	ws, err := d.roles.Control.Workers(ctx)
	if err != nil || len(ws) != 1 || ws[0].ID != "dup" {
		t.Fatalf("workers after the refusal: %+v (%v), want the first dup", ws, err)
	}
	r, err := d.ctl.Ping(ctx, target("dup"))
	if err != nil || len(r.Replies) != 1 || len(r.Missing) != 0 {
		t.Fatalf("ping dup after the refusal: %+v (%v)", r, err)
	}
	if res := d.wait(d.enqueue("echo", stem.EnqueueOptions{})); res.State != stemtype.StateSucceeded {
		t.Fatalf("task after the refusal: %+v", res)
	}
}

// A running worker that finds its id taken by another live instance (its
// own presence lapsed, as in a pause or a partition longer than its ttl)
// shuts down warmly, and Run returns an error matching ErrWorkerIDTaken:
// two workers never keep answering to one id.
func testWorkerStopsWhenIDTakenWhileRunning(t *testing.T, h Harness) {
	d := open(t, h)
	// Re-announced every 100ms (a 300ms ttl): quick to meet the intruder,
	// and a ttl that a loaded machine (a race-instrumented SQLite holds a
	// write for up to 0.4s there) does not let lapse between two
	// announcements.
	w := d.newWorker(stem.WorkerConfig{ID: "dup", PresenceInterval: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	select {
	case <-w.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	// The worker is listed (a lapse in a stall shows as an empty list for
	// a moment: wait for it back, within the failure bound).
	var ws []stemtype.WorkerInfo
	for {
		var err error
		ws, err = d.roles.Control.Workers(ctx)
		if err == nil && len(ws) == 1 {
			break
		}
		if err != nil || len(ws) > 1 || ctx.Err() != nil {
			cancel()
			<-done
			t.Fatalf("workers: %+v (%v)", ws, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The worker's presence lapses (withdrawn here) and another instance
	// takes the id. The worker re-announces every 10ms, so it may take
	// the id back between the two calls: then the lapse is tried again.
	intruder := stemtype.WorkerInfo{ID: "dup", Namespace: d.ns, Host: "elsewhere", PID: 7, Instance: "intruder"}
	for {
		if err := d.roles.Control.Withdraw(ctx, "dup", ws[0].Instance); err != nil {
			cancel()
			<-done
			t.Fatal(err)
		}
		err := d.roles.Control.Announce(ctx, intruder, time.Minute)
		if err == nil {
			break
		}
		if !errors.Is(err, stemdriver.ErrWorkerIDTaken) || ctx.Err() != nil {
			cancel()
			<-done
			t.Fatal(err)
		}
	}
	select {
	case err := <-done:
		if !errors.Is(err, stemdriver.ErrWorkerIDTaken) || !strings.Contains(err.Error(), "host elsewhere pid 7") {
			t.Fatalf("Run = %v, want an error matching ErrWorkerIDTaken naming the other instance", err)
		}
	case <-ctx.Done():
		<-done
		t.Fatal("the worker kept running after another instance took its id")
	}
	// The other instance keeps the id: the stopping worker withdrew only
	// its own entry.
	ws, err := d.roles.Control.Workers(context.Background())
	if err != nil || len(ws) != 1 || ws[0].Instance != "intruder" {
		t.Fatalf("workers after the stop: %+v (%v), want the intruder alone", ws, err)
	}
}
