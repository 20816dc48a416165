package stem

import (
	"math/rand/v2"
	"time"
)

// RetryPolicy chooses how long to wait before the next attempt of a failed
// task.
type RetryPolicy interface {
	// NextRetry returns the delay before attempt (1 for the first retry).
	NextRetry(attempt int) time.Duration
}

// ExponentialBackoff doubles the delay with each attempt, from Base up to
// Max, and adds jitter so that many failing tasks do not retry in lockstep.
type ExponentialBackoff struct {
	// Base is the delay before the first retry. Zero means one second.
	Base time.Duration
	// Max caps the delay. Zero means ten minutes.
	Max time.Duration
	// Jitter is the fraction of the delay that is randomised, between 0
	// and 1: the delay is drawn uniformly from [d*(1-Jitter), d]. Zero
	// means no jitter.
	Jitter float64
}

// DefaultRetryPolicy returns the policy used by tasks whose options set
// none: 1s, 2s, 4s... up to 10 minutes, with 20% jitter. It is a function,
// not a variable, so that no program can change the default of every
// worker in the process; a task that wants another policy sets
// TaskOptions.RetryPolicy.
func DefaultRetryPolicy() RetryPolicy {
	return ExponentialBackoff{Base: time.Second, Max: 10 * time.Minute, Jitter: 0.2}
}

// NextRetry implements RetryPolicy.
func (b ExponentialBackoff) NextRetry(attempt int) time.Duration {
	base, maxDelay := b.Base, b.Max
	if base <= 0 {
		base = time.Second
	}
	if maxDelay <= 0 {
		maxDelay = 10 * time.Minute
	}
	if attempt < 1 {
		attempt = 1
	}
	d := base
	for i := 1; i < attempt && d < maxDelay; i++ {
		d *= 2
	}
	d = min(d, maxDelay)
	if j := min(max(b.Jitter, 0), 1); j > 0 {
		span := time.Duration(float64(d) * j)
		if span > 0 {
			d -= time.Duration(rand.Int64N(int64(span) + 1))
		}
	}
	return d
}
