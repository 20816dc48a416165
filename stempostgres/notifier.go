package stempostgres

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// notifier sends a pool's NOTIFYs for writes that committed on their own
// (Publish, Retry, Release and Reply outside a caller's transaction),
// coalesced, one statement in flight at a time.
//
// Why not NOTIFY in the writing statement: PostgreSQL serialises the
// commits of transactions that notify (a database-wide lock held through
// the commit's WAL flush), so writers that notify never share a disk
// sync. On the test machine, eight producers inserting one row per
// statement reached 1,700 commits/s without NOTIFY and 400/s with it,
// while NOTIFY-only statements (which write no WAL) ran at 7,300/s. So
// the write commits alone and the notification follows it at once; a
// notification lost in between (the process dies) delays the work until
// the next poll, never loses it. Views in a caller's transaction (InTx)
// still notify within it, so that workers wake at its commit.
type notifier struct {
	pool *pgxpool.Pool
	log  *slog.Logger

	mu      sync.Mutex
	pending map[[2]string]struct{} // channel, payload
	started bool
	wake    chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

func newNotifier(pool *pgxpool.Pool, log *slog.Logger) *notifier {
	ctx, cancel := context.WithCancel(context.Background())
	return &notifier{pool: pool, log: log, pending: make(map[[2]string]struct{}), wake: make(chan struct{}, 1),
		ctx: ctx, cancel: cancel, done: make(chan struct{})}
}

// notifySQL sends one notification per row of its arrays.
const notifySQL = `SELECT count(pg_notify(c, p)) FROM unnest($1::text[], $2::text[]) AS u(c, p)`

// send queues a notification of payload on channel; it never blocks.
func (n *notifier) send(channel string, payloads ...string) {
	n.mu.Lock()
	if n.ctx.Err() != nil {
		n.mu.Unlock()
		return
	}
	for _, p := range payloads {
		n.pending[[2]string{channel, p}] = struct{}{}
	}
	if !n.started {
		n.started = true
		go n.run()
	}
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// take returns the pending notifications and clears them.
func (n *notifier) take() (chans, payloads []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for k := range n.pending {
		chans, payloads = append(chans, k[0]), append(payloads, k[1])
	}
	clear(n.pending)
	return chans, payloads
}

func (n *notifier) run() {
	defer close(n.done)
	for {
		select {
		case <-n.wake:
		case <-n.ctx.Done():
			return
		}
		chans, payloads := n.take()
		if len(chans) == 0 {
			continue
		}
		if _, err := n.pool.Exec(n.ctx, notifySQL, chans, payloads); err != nil && n.ctx.Err() == nil {
			n.log.Debug("stem: postgres: notification not sent; idle workers poll", "error", err.Error())
		}
	}
}

// close sends what is pending (for at most a second) and stops.
func (n *notifier) close() {
	n.mu.Lock()
	started := n.started
	n.started = true
	n.mu.Unlock()
	if started {
		n.cancel()
		<-n.done
	}
	n.cancel()
	if chans, payloads := n.take(); len(chans) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, _ = n.pool.Exec(ctx, notifySQL, chans, payloads)
	}
}
