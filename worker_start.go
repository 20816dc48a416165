package stem

import (
	"context"
	"fmt"
	"time"
)

// startRetry is the backoff between attempts to reach a store a worker
// needs before it claims (the control transport's subscription, the
// revoke store's first load) while it cannot be reached at start: 100ms,
// doubling up to 2s, with 50% jitter so that a fleet restarted together
// does not retry in lockstep. The cap keeps a worker consuming within a
// few seconds of the store's return (2s between attempts at most, plus
// the attempt itself). WorkerConfig.FailFast turns the retries off.
// stemcli's `worker start` opens its stores with the same backoff.
func startRetry() RetryPolicy {
	return ExponentialBackoff{Base: 100 * time.Millisecond, Max: 2 * time.Second, Jitter: 0.5}
}

// untilReachable calls fn until it succeeds, ctx ends, or (with
// WorkerConfig.FailFast) after the first failure, logging each failure
// with what failed (store: "revoke store", "control transport"), where
// (addr, redacted: from WorkerConfig.Stores, "" when unknown) and when
// the next attempt is. It returns fn's last error, or ctx's cause when ctx
// ended first. Nothing is claimed meanwhile: Run calls it before fetch
// starts.
func (w *Worker) untilReachable(ctx context.Context, store, addr string, fn func(context.Context) error) error {
	policy := startRetry()
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			if attempt > 1 {
				w.log.Info(store+" reachable: continuing start-up", "store", store, "addr", addr, "attempts", attempt)
			}
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (while waiting for the %s: %v)", ctx.Err(), store, err)
		}
		if w.cfg.FailFast {
			return err
		}
		delay := policy.NextRetry(attempt)
		w.log.Warn(store+" unreachable at start: not claiming any task until it answers; retrying",
			"store", store, "addr", addr, "attempt", attempt, "retry_in", delay.Round(time.Millisecond), "err", err)
		if !sleepCtx(ctx, delay) {
			return fmt.Errorf("%w (while waiting for the %s: %v)", ctx.Err(), store, err)
		}
	}
}

// storeAddr returns the redacted URL WorkerConfig.Stores gives for role
// ("revokes", "control"), "" when unknown.
func (w *Worker) storeAddr(role string) string {
	s := w.cfg.Stores
	if s == nil {
		return ""
	}
	switch role {
	case "revokes":
		return s.Revokes
	case "control":
		return s.Control
	}
	return ""
}
