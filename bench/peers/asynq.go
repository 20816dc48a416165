package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
)

// asynqSystem is asynq v0.26 on Redis through its public API, with its
// defaults but Concurrency and the queue: a fresh queue per run (asynq's
// keys are per queue), deleted at Close.
type asynqSystem struct {
	p       *probe
	opt     asynq.RedisConnOpt
	queue   string
	client  *asynq.Client
	insp    *asynq.Inspector
	srv     *asynq.Server
	started bool
	logger  *slog.Logger
}

// Task types of the scenarios.
const (
	asynqNoop   = "peers:noop"
	asynqPickup = "peers:pickup"
	asynqLong   = "peers:long"
)

var asynqSeq atomic.Int64

// openAsynq connects asynq's client and inspector to rawURL (redis://).
func openAsynq(_ context.Context, rawURL string, p *probe, logger *slog.Logger) (*asynqSystem, error) {
	opt, err := asynq.ParseRedisURI(rawURL)
	if err != nil {
		return nil, fmt.Errorf("asynq: %w", err)
	}
	q := fmt.Sprintf("peers-%d-%d", time.Now().UnixNano(), asynqSeq.Add(1))
	return &asynqSystem{p: p, opt: opt, queue: q, client: asynq.NewClient(opt), insp: asynq.NewInspector(opt), logger: logger}, nil
}

// Backend implements system.
func (s *asynqSystem) Backend() string { return "redis" }

// EnqueueNoops implements system: asynq has no batch enqueue, so 8
// goroutines enqueue one task per call (batch is ignored).
func (s *asynqSystem) EnqueueNoops(ctx context.Context, n, _ int) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := s.EnqueueNoop(ctx); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// EnqueueNoop implements system.
func (s *asynqSystem) EnqueueNoop(ctx context.Context) error {
	_, err := s.client.EnqueueContext(ctx, asynq.NewTask(asynqNoop, []byte(`{"n":1}`)), asynq.Queue(s.queue))
	return err
}

// Start implements system: one server on the run's queue.
func (s *asynqSystem) Start(_ context.Context, c int) error {
	if s.started {
		return errors.New("server already started")
	}
	mux := asynq.NewServeMux()
	mux.HandleFunc(asynqNoop, func(context.Context, *asynq.Task) error { s.p.noop(); return nil })
	mux.HandleFunc(asynqPickup, func(context.Context, *asynq.Task) error { s.p.pickedUp(); return nil })
	mux.HandleFunc(asynqLong, func(ctx context.Context, t *asynq.Task) error {
		id, _ := asynq.GetTaskID(ctx)
		s.p.longTask(ctx, id)
		return ctx.Err()
	})
	s.srv = asynq.NewServer(s.opt, asynq.Config{Concurrency: c, Queues: map[string]int{s.queue: 1},
		LogLevel: asynq.ErrorLevel, Logger: quietAsynqLogger{s.logger}})
	if err := s.srv.Start(mux); err != nil {
		return err
	}
	s.started = true
	return nil
}

// EnqueuePickup implements system.
func (s *asynqSystem) EnqueuePickup(ctx context.Context) error {
	_, err := s.client.EnqueueContext(ctx, asynq.NewTask(asynqPickup, nil), asynq.Queue(s.queue))
	return err
}

// EnqueueLong implements system.
func (s *asynqSystem) EnqueueLong(ctx context.Context) (string, error) {
	info, err := s.client.EnqueueContext(ctx, asynq.NewTask(asynqLong, nil), asynq.Queue(s.queue))
	if err != nil {
		return "", err
	}
	return info.ID, nil
}

// Cancel implements system with Inspector.CancelProcessing, asynq's way
// of cancelling an active task (a pub/sub message to the servers).
func (s *asynqSystem) Cancel(_ context.Context, id string) error {
	return s.insp.CancelProcessing(id)
}

// Outcome implements system: asynq treats the cancelled handler's error
// as a failure and schedules a retry. Once the task has left the active
// state it is deleted, so that its retry does not run during the rounds.
func (s *asynqSystem) Outcome(ctx context.Context, id string) (bool, error) {
	deadline := time.Now().Add(roundTimeout)
	for {
		info, err := s.insp.GetTaskInfo(s.queue, id)
		if err != nil {
			return false, err
		}
		if info.State != asynq.TaskStateActive {
			final := info.State == asynq.TaskStateArchived || info.State == asynq.TaskStateCompleted
			return final, s.insp.DeleteTask(s.queue, id)
		}
		if time.Now().After(deadline) {
			return false, fmt.Errorf("task %s still active after %s", id, roundTimeout)
		}
		if err := pace(ctx, time.Now(), time.Millisecond); err != nil {
			return false, err
		}
	}
}

// Stop implements system: Shutdown waits for running handlers.
func (s *asynqSystem) Stop(context.Context) error {
	if s.started {
		s.srv.Shutdown()
		s.started = false
	}
	return nil
}

// CheckDrained implements system: the queue holds no pending, active,
// scheduled or retrying task, and no failure was archived.
func (s *asynqSystem) CheckDrained(_ context.Context, n int) error {
	info, err := s.insp.GetQueueInfo(s.queue)
	if err != nil {
		return err
	}
	if left := info.Pending + info.Active + info.Scheduled + info.Retry + info.Archived; left > 0 {
		return fmt.Errorf("%d of %d tasks not completed after the drain (%+v)", left, n, info)
	}
	return nil
}

// Close implements system: stops the server and deletes the queue.
func (s *asynqSystem) Close(ctx context.Context) error {
	err := s.Stop(ctx)
	if derr := s.insp.DeleteQueue(s.queue, true); derr != nil && !errors.Is(derr, asynq.ErrQueueNotFound) {
		err = errors.Join(err, derr)
	}
	return errors.Join(err, s.client.Close(), s.insp.Close())
}

// quietAsynqLogger sends asynq's logs to the run's logger, which shows
// warnings and errors only.
type quietAsynqLogger struct{ l *slog.Logger }

func (q quietAsynqLogger) Debug(args ...any) {}
func (q quietAsynqLogger) Info(args ...any)  {}
func (q quietAsynqLogger) Warn(args ...any) {
	q.l.Warn("asynq: " + strings.TrimSpace(fmt.Sprint(args...)))
}
func (q quietAsynqLogger) Error(args ...any) {
	q.l.Error("asynq: " + strings.TrimSpace(fmt.Sprint(args...)))
}
func (q quietAsynqLogger) Fatal(args ...any) {
	q.l.Error("asynq: " + strings.TrimSpace(fmt.Sprint(args...)))
}
