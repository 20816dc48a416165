package stem_test

import (
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/systemtest"
)

// hooks are one worker's test seams (stem.SetTestHooks).
type hooks struct {
	progressChecked func(taskID string)
	settled         func(taskID string)
}

// startHookedWorker is startWorker with h installed on the worker before
// it runs: the seams are that worker's own, so parallel tests never see
// each other's.
func (e *env) startHookedWorker(cfg stem.WorkerConfig, h hooks) (*stem.Worker, func()) {
	e.t.Helper()
	cfg.Registry, cfg.Broker, cfg.Results, cfg.Namespace = e.reg, e.broker, e.results, e.ns
	if cfg.Revokes == nil {
		cfg.Revokes = e.revokes
	}
	if cfg.Control == nil {
		cfg.Control = e.control
	}
	if cfg.Logger == nil {
		cfg.Logger = quiet()
	}
	if cfg.ClaimWait == 0 {
		cfg.ClaimWait = 50 * time.Millisecond
	}
	w, err := stem.NewWorker(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	stem.SetTestHooks(w, h.progressChecked, h.settled)
	return w, systemtest.RunWorker(e.t, w)
}
