package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
	"github.com/stem-go/stem/stemurl"
)

// stemSystem is stem with every role on one URL, in a fresh namespace,
// with the worker's defaults but Concurrency.
type stemSystem struct {
	backend string
	ns      string
	p       *probe
	logger  *slog.Logger
	stores  *stemurl.Opened
	reg     *stem.Registry
	client  *stem.Client
	ctl     *stem.Controller
	cleanup func() error // removes a fresh SQLite file's directory

	ids []string // the no-op tasks enqueued

	stopWorker context.CancelFunc
	done       chan error // Run's error, once the worker stopped
}

// Task names of the scenarios.
const (
	stemNoop   = "peers.noop"
	stemPickup = "peers.pickup"
	stemLong   = "peers.long"
)

// openStem opens stem's four stores on rawURL in a fresh namespace (and,
// on Postgres, a fresh schema; on SQLite, a fresh file).
func openStem(ctx context.Context, rawURL string, p *probe, logger *slog.Logger) (_ *stemSystem, err error) {
	backend, err := backendOf(rawURL)
	if err != nil {
		return nil, err
	}
	s := &stemSystem{backend: backend, ns: "peers-" + stem.NewTaskID()[:12], p: p, logger: logger}
	u := rawURL
	switch backend {
	case "sqlite":
		if u, s.cleanup, err = freshSQLite(rawURL, func(path, query string) string {
			return "sqlite://" + path + query
		}); err != nil {
			return nil, err
		}
	case "postgres":
		// A fresh schema, as River gets: no run inherits the dead rows
		// of the ones before it.
		if u, s.cleanup, err = freshPostgresSchema(ctx, rawURL); err != nil {
			return nil, err
		}
	}
	defer func() {
		if err != nil && s.cleanup != nil {
			err = errors.Join(err, s.cleanup())
		}
	}()
	s.stores, err = stemurl.New().Open(ctx, stemurl.URLs{Broker: u, Results: u, Revokes: u}, stemurl.AllRoles,
		stemdriver.Options{Namespace: s.ns, Logger: logger})
	if err != nil {
		return nil, err // an *stemurl.OpenError: the URL is redacted
	}
	s.reg = stem.NewRegistry()
	stem.Register(s.reg, stemNoop, func(*stem.TaskContext, stem.Args) (any, error) {
		p.noop()
		return nil, nil
	}, stem.TaskOptions{})
	stem.Register(s.reg, stemPickup, func(*stem.TaskContext, stem.Args) (any, error) {
		p.pickedUp()
		return nil, nil
	}, stem.TaskOptions{})
	stem.Register(s.reg, stemLong, func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		p.longTask(tc, tc.TaskID())
		return nil, tc.Heartbeat()
	}, stem.TaskOptions{})
	s.client, err = stem.NewClient(stem.ClientConfig{Broker: s.stores.Broker, Results: s.stores.Results,
		Registry: s.reg, Logger: logger})
	if err == nil {
		s.ctl, err = stem.NewController(stem.ControllerConfig{Namespace: s.ns, Control: s.stores.Control,
			Revokes: s.stores.Revokes, Results: s.stores.Results, Logger: logger})
	}
	if err != nil {
		return nil, errors.Join(err, s.stores.Close())
	}
	return s, nil
}

// Backend implements system.
func (s *stemSystem) Backend() string { return s.backend }

// EnqueueNoops implements system with Client.EnqueueBatch.
func (s *stemSystem) EnqueueNoops(ctx context.Context, n, batch int) error {
	args := stem.Args(`{"n":1}`)
	s.ids = make([]string, 0, n)
	for len(s.ids) < n {
		reqs := make([]stem.EnqueueRequest, min(batch, n-len(s.ids)))
		for i := range reqs {
			reqs[i] = stem.EnqueueRequest{Task: stemNoop, Args: args}
		}
		ids, err := s.client.EnqueueBatch(ctx, reqs)
		if err != nil {
			return err
		}
		s.ids = append(s.ids, ids...)
	}
	return nil
}

// Start implements system: one worker with every role.
func (s *stemSystem) Start(ctx context.Context, c int) error {
	if s.done != nil {
		return errors.New("worker already started")
	}
	w, err := stem.NewWorker(stem.WorkerConfig{Namespace: s.ns, Registry: s.reg, Broker: s.stores.Broker,
		Results: s.stores.Results, Revokes: s.stores.Revokes, Control: s.stores.Control,
		Concurrency: c, Logger: s.logger})
	if err != nil {
		return err
	}
	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stopWorker, s.done = stop, make(chan error, 1)
	go func() { s.done <- w.Run(wctx) }()
	select {
	case <-w.Ready():
		return nil
	case err := <-s.done:
		s.done <- err
		return fmt.Errorf("worker stopped before it was ready: %w", err)
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// EnqueuePickup implements system.
func (s *stemSystem) EnqueuePickup(ctx context.Context) error {
	_, err := s.client.Enqueue(ctx, stemPickup, nil, stem.EnqueueOptions{})
	return err
}

// EnqueueLong implements system.
func (s *stemSystem) EnqueueLong(ctx context.Context) (string, error) {
	return s.client.Enqueue(ctx, stemLong, nil, stem.EnqueueOptions{})
}

// Cancel implements system: a revoke with Terminate, broadcast through the
// control transport (what `stem task revoke --terminate` does).
func (s *stemSystem) Cancel(ctx context.Context, id string) error {
	res, err := s.ctl.Revoke(ctx, stem.Target{}, stem.RevokeOptions{TaskIDs: []string{id}, Terminate: true,
		Reason: "peers benchmark"})
	if err != nil {
		return err
	}
	if len(res.Replies.Missing) > 0 {
		return fmt.Errorf("revoke: no reply from %v", res.Replies.Missing)
	}
	return nil
}

// Stop implements system: a warm shutdown, which records every outcome.
func (s *stemSystem) Stop(context.Context) error {
	if s.done == nil {
		return nil
	}
	s.stopWorker()
	err := <-s.done
	s.done = nil
	return err
}

// CheckDrained implements system: every no-op task's result is succeeded.
func (s *stemSystem) CheckDrained(ctx context.Context, n int) error {
	if len(s.ids) != n {
		return fmt.Errorf("%d tasks enqueued, want %d", len(s.ids), n)
	}
	for i := 0; i < len(s.ids); i += 1000 {
		ids := s.ids[i:min(i+1000, len(s.ids))]
		res, err := s.stores.Results.GetMany(ctx, ids...)
		if err != nil {
			return fmt.Errorf("check results: %w", err)
		}
		for j, r := range res {
			if r == nil || r.State != stemtype.StateSucceeded {
				state := "no result"
				if r != nil {
					state = string(r.State)
				}
				return fmt.Errorf("task %s: %s after the drain, want %s", ids[j], state, stemtype.StateSucceeded)
			}
		}
	}
	return nil
}

// Close implements system.
func (s *stemSystem) Close(ctx context.Context) error {
	err := s.Stop(ctx)
	err = errors.Join(err, s.stores.Close())
	if s.cleanup != nil {
		err = errors.Join(err, s.cleanup())
	}
	return err
}

// EnqueueNoop implements system with Client.Enqueue.
func (s *stemSystem) EnqueueNoop(ctx context.Context) error {
	_, err := s.client.Enqueue(ctx, stemNoop, stem.Args(`{"n":1}`), stem.EnqueueOptions{})
	return err
}

// Outcome implements system: a terminate revoke ends the task cancelled,
// a final state.
func (s *stemSystem) Outcome(ctx context.Context, id string) (bool, error) {
	res, err := s.client.Wait(ctx, id)
	if err != nil {
		return false, err
	}
	return res.State == stemtype.StateCancelled, nil
}
