package stemredis

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// blocker runs blocking commands (XREAD BLOCK) that end early when their
// context does.
//
// go-redis does not watch a context while it waits for a reply: only a
// deadline reaches the socket, and cancelling would mean closing the
// connection. So each blocking command runs on a connection of its own whose
// server-side client id is known, and when the context ends first the
// blocker sends CLIENT UNBLOCK for that id on another connection. The
// blocked command then returns as if it had timed out, and its connection
// is healthy and reused: a cancelled wait neither leaks nor poisons the
// pool. The dedicated connections come from a client of the blocker's own
// (same options, a pool of its own), so waiting never takes connections
// from the role's client: scripts and CLIENT UNBLOCK always find one.
type blocker struct {
	rdb *redis.Client // the role's client, for CLIENT UNBLOCK
	own *redis.Client // where the dedicated connections come from

	mu     sync.Mutex
	idle   []*blockConn
	active map[*blockConn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// blockConn is a dedicated connection and its server-side client id.
type blockConn struct {
	conn *redis.Conn
	id   int64
}

func newBlocker(rdb *redis.Client, parsed redis.Options) *blocker {
	opts := parsed
	opts.PoolSize = blockerPoolSize
	opts.MinIdleConns = 0
	return &blocker{rdb: rdb, own: redis.NewClient(&opts), active: make(map[*blockConn]struct{})}
}

// blockerPoolSize bounds the blocking waits of one role at once.
const blockerPoolSize = 64

// errBlockerClosed is returned by do once close was called.
var errBlockerClosed = errors.New("stem: redis: blocking reader closed")

// get returns an idle dedicated connection or opens one.
func (b *blocker) get(ctx context.Context) (*blockConn, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, errBlockerClosed
	}
	b.wg.Add(1)
	if n := len(b.idle); n > 0 {
		bc := b.idle[n-1]
		b.idle = b.idle[:n-1]
		b.active[bc] = struct{}{}
		b.mu.Unlock()
		return bc, nil
	}
	b.mu.Unlock()

	conn := b.own.Conn()
	id, err := conn.ClientID(ctx).Result()
	if err != nil {
		_ = conn.Close()
		b.wg.Done()
		return nil, err
	}
	bc := &blockConn{conn: conn, id: id}
	b.mu.Lock()
	b.active[bc] = struct{}{}
	b.mu.Unlock()
	return bc, nil
}

// put gives bc back, or closes it when it may be broken or the blocker is
// closed.
func (b *blocker) put(bc *blockConn, healthy bool) {
	defer b.wg.Done()
	b.mu.Lock()
	delete(b.active, bc)
	if healthy && !b.closed {
		b.idle = append(b.idle, bc)
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	_ = bc.conn.Close()
}

// do runs fn, a single blocking command on conn, and unblocks it when ctx
// ends first. It returns ctx's error in that case, and fn's otherwise.
func (b *blocker) do(ctx context.Context, fn func(ctx context.Context, conn *redis.Conn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	bc, err := b.get(ctx)
	if err != nil {
		return err
	}
	var finished atomic.Bool
	unblocked := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(unblocked)
		b.unblock(bc, &finished)
	})
	err = fn(context.WithoutCancel(ctx), bc.conn)
	finished.Store(true)
	if !stop() {
		<-unblocked
	}
	b.put(bc, err == nil || errors.Is(err, redis.Nil))
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	return err
}

// unblock sends CLIENT UNBLOCK for bc until its command has returned. The
// command may not have reached the server yet when unblock starts (CLIENT
// UNBLOCK then answers 0), so it tries again every millisecond; the
// command's own block timeout bounds how long that can go on.
func (b *blocker) unblock(bc *blockConn, finished *atomic.Bool) {
	t := time.NewTimer(0)
	defer t.Stop()
	for !finished.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		n, err := b.rdb.ClientUnblock(ctx, bc.id).Result()
		cancel()
		if err != nil || n == 1 {
			return
		}
		t.Reset(time.Millisecond)
		<-t.C
	}
}

// close unblocks every running command, waits for them to return and
// closes every dedicated connection.
func (b *blocker) close() {
	b.mu.Lock()
	b.closed = true
	idle := b.idle
	b.idle = nil
	b.mu.Unlock()
	for _, bc := range idle {
		_ = bc.conn.Close()
	}

	done := make(chan struct{})
	go func() {
		b.wg.Wait()
		close(done)
	}()
	// A command may not have reached the server when its unblock is sent,
	// so keep unblocking whatever is still running until all returned.
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		b.mu.Lock()
		ids := make([]int64, 0, len(b.active))
		for bc := range b.active {
			ids = append(ids, bc.id)
		}
		b.mu.Unlock()
		for _, id := range ids {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = b.rdb.ClientUnblock(ctx, id).Err()
			cancel()
		}
		t.Reset(2 * time.Millisecond)
		select {
		case <-done:
			_ = b.own.Close()
			return
		case <-t.C:
		}
	}
}
