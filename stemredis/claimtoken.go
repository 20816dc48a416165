package stemredis

import (
	"sync"

	"github.com/redis/go-redis/v9"
)

// Claims are idempotent under a token (see claimScript): a claim whose
// reply was lost is replayed with its token, by go-redis (which sends a
// command again after a network error, max_retries) or by the next Claim
// of the same consumer on the same queue, and the replay returns the
// messages the first run leased instead of leasing more. Without it the
// first run's messages would wait out their whole lease, held by nobody.

// maxDoneClaims bounds the records of answered claims a queue keeps for
// deletion by its next claim; beyond it records are left to expire.
const maxDoneClaims = 64

// claimTokens hands out claim tokens. It keeps the token of a claim that
// failed, per consumer and queue, for the next claim of that consumer on
// that queue to replay, and the tokens of claims whose replies arrived
// (their records are no longer needed), per queue, for the next claim on
// the queue to delete.
type claimTokens struct {
	mu      sync.Mutex
	pending map[claimSlot]string
	done    map[string][]string
}

type claimSlot struct{ consumer, queue string }

// take returns the token for a claim of consumer on queue: the token of
// its last claim there when that one failed (taken away, so that two
// concurrent claims never replay one record), or a new one; and the
// tokens of answered claims on queue whose records the claim deletes.
func (c *claimTokens) take(consumer, queue string) (token string, done []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	slot := claimSlot{consumer, queue}
	token, ok := c.pending[slot]
	if ok {
		delete(c.pending, slot)
	} else {
		token = string(appendDelayedToken(make([]byte, 0, delayedTokenLen)))
	}
	done = c.done[queue]
	delete(c.done, queue)
	return token, done
}

// settle records the outcome of the claim run with token: when it failed
// (ok false) its token is kept for the next claim of consumer on queue,
// and the records it was to delete are handed to the next claim; when it
// leased messages its record is to be deleted.
func (c *claimTokens) settle(consumer, queue, token string, done []string, ok, leased bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !ok {
		if c.pending == nil {
			c.pending = make(map[claimSlot]string)
		}
		c.pending[claimSlot{consumer, queue}] = token
	} else if leased {
		done = []string{token} // the run deleted the others
	} else {
		done = nil
	}
	if len(done) == 0 {
		return
	}
	if c.done == nil {
		c.done = make(map[string][]string)
	}
	d := append(c.done[queue], done...)
	if len(d) > maxDoneClaims {
		d = d[len(d)-maxDoneClaims:]
	}
	c.done[queue] = d
}

// newOnceClient returns a client on the server of parsed (the options as
// parsed, before any client used them) that sends each command once:
// after a network error it reports the error instead of sending the
// command again, since the server may have run it. Publish uses it: a
// replayed publish would store its messages twice, and a replayed pending
// state could overwrite the "started" a fast worker wrote meanwhile. The
// producer gets the error (stem.EnqueueError, published unknown) and
// decides. Dialling is still retried (a command that never reached the
// server is safe to send), and a pooled connection the server closed is
// noticed before use, so a restarted server costs no error.
func newOnceClient(parsed redis.Options) *redis.Client {
	opts := parsed
	opts.MaxRetries = -1
	opts.MinIdleConns = 0
	return redis.NewClient(&opts)
}
