package stempostgres

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// handler receives the notifications of one channel. notify must not
// block: it runs on the listener's goroutine. reset is called after the
// listener reconnected, when notifications may have been missed, so that
// waiters poll again.
type handler struct {
	notify func(payload string)
	reset  func()
}

// listener is a process's one LISTEN connection per shared pool. It LISTENs
// on the channels its handlers need, reconnects when the connection drops
// (a restart, pg_terminate_backend), and then calls every handler's reset.
// It never UNLISTENs: a channel stays listened while the connection lasts
// (there are three per namespace in use), so that a handler added again
// never races an UNLISTEN; notifications of a channel without handlers are
// dropped.
type listener struct {
	cfg      *pgx.ConnConfig
	log      *slog.Logger
	shown    string
	password string

	mu       sync.Mutex
	handlers map[string]map[*handler]struct{} // by channel
	// listening is the set of channels LISTENed on the current connection.
	listening map[string]bool
	// acks are closed once their channel is LISTENed on a connection.
	acks map[string][]chan struct{}
	// interrupt cancels the current WaitForNotification, so that the loop
	// updates the LISTEN set; nil while the loop is not waiting.
	interrupt context.CancelFunc
	dirty     bool
	started   bool

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

func newListener(cfg *pgx.ConnConfig, log *slog.Logger, shown, password string) *listener {
	ctx, cancel := context.WithCancel(context.Background())
	return &listener{
		cfg:       cfg,
		log:       log,
		shown:     shown,
		password:  password,
		handlers:  make(map[string]map[*handler]struct{}),
		listening: make(map[string]bool),
		acks:      make(map[string][]chan struct{}),
		ctx:       ctx,
		cancel:    cancel,
		done:      make(chan struct{}),
	}
}

// add registers h for channel and returns once the channel is LISTENed on
// the listener's connection (so that a NOTIFY sent after add returns is
// seen), or when ctx ends: then it returns ctx's error with h still
// registered (the channel is LISTENed once the listener connects), and the
// caller decides whether to keep it. The returned function removes h. It
// fails, registering nothing, once the listener is closed.
func (l *listener) add(ctx context.Context, channel string, h *handler) (func(), error) {
	l.mu.Lock()
	if l.ctx.Err() != nil {
		l.mu.Unlock()
		return nil, errors.New("listener closed")
	}
	if !l.started {
		l.started = true
		go l.run()
	}
	hs := l.handlers[channel]
	if hs == nil {
		hs = make(map[*handler]struct{})
		l.handlers[channel] = hs
	}
	hs[h] = struct{}{}
	var ack chan struct{}
	if !l.listening[channel] {
		ack = make(chan struct{})
		l.acks[channel] = append(l.acks[channel], ack)
		l.kickLocked()
	}
	l.mu.Unlock()
	remove := func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if hs := l.handlers[channel]; hs != nil {
			delete(hs, h)
			if len(hs) == 0 {
				delete(l.handlers, channel)
			}
		}
	}
	if ack != nil {
		select {
		case <-ack:
		case <-ctx.Done():
			return remove, ctx.Err()
		case <-l.ctx.Done():
			remove()
			return nil, errors.New("listener closed")
		}
	}
	return remove, nil
}

// kickLocked makes the loop update its LISTEN set. l.mu must be held.
func (l *listener) kickLocked() {
	l.dirty = true
	if l.interrupt != nil {
		l.interrupt()
		l.interrupt = nil
	}
}

// close stops the listener and waits for its goroutine.
func (l *listener) close() {
	l.mu.Lock()
	started := l.started
	l.started = true // no later add starts it
	l.cancel()
	l.mu.Unlock()
	if started {
		<-l.done
	}
}

// run connects, listens and dispatches until close, reconnecting with a
// growing pause (50 ms to 2 s) while the server cannot be reached.
func (l *listener) run() {
	defer close(l.done)
	pause := 50 * time.Millisecond
	first := true
	for l.ctx.Err() == nil {
		conn, err := pgx.ConnectConfig(l.ctx, l.cfg)
		if err != nil {
			if l.ctx.Err() != nil {
				return
			}
			l.log.Warn("stem: postgres: listener cannot connect; retrying", "url", l.shown, "error", scrub(err, l.password).Error(), "retry_in", pause)
			select {
			case <-time.After(pause):
			case <-l.ctx.Done():
				return
			}
			pause = min(2*pause, 2*time.Second)
			continue
		}
		pause = 50 * time.Millisecond
		err = l.serve(conn, !first)
		first = false
		_ = conn.Close(context.Background())
		if l.ctx.Err() != nil {
			return
		}
		l.log.Warn("stem: postgres: listener connection lost; reconnecting", "url", l.shown, "error", scrub(err, l.password).Error())
	}
}

// serve LISTENs and dispatches on conn until it fails or the listener
// closes. After a reconnect, it resets every handler once its channels are
// LISTENed again.
func (l *listener) serve(conn *pgx.Conn, reconnected bool) error {
	l.mu.Lock()
	l.listening = make(map[string]bool)
	l.dirty = true
	l.mu.Unlock()
	for {
		l.mu.Lock()
		if l.ctx.Err() != nil {
			l.mu.Unlock()
			return nil
		}
		var listen []string
		if l.dirty {
			for ch := range l.handlers {
				if !l.listening[ch] {
					listen = append(listen, ch)
				}
			}
			l.dirty = false
		}
		l.mu.Unlock()

		for _, ch := range listen {
			if _, err := conn.Exec(l.ctx, "LISTEN "+quoteIdent(ch)); err != nil {
				return err
			}
		}
		l.mu.Lock()
		for _, ch := range listen {
			l.listening[ch] = true
			for _, a := range l.acks[ch] {
				close(a)
			}
			delete(l.acks, ch)
		}
		var resets []*handler
		if reconnected {
			reconnected = false
			for _, hs := range l.handlers {
				for h := range hs {
					resets = append(resets, h)
				}
			}
		}
		dirty := l.dirty
		var wctx context.Context
		var cancel context.CancelFunc
		if !dirty {
			wctx, cancel = context.WithCancel(l.ctx)
			l.interrupt = cancel
		}
		l.mu.Unlock()
		// Waiters poll again: notifications were missed while the
		// connection was down.
		for _, h := range resets {
			if h.reset != nil {
				h.reset()
			}
		}
		if dirty {
			continue
		}

		for {
			n, err := conn.WaitForNotification(wctx)
			if err != nil {
				cancel()
				if wctx.Err() != nil && !conn.IsClosed() {
					break // interrupted: update the LISTEN set
				}
				return err
			}
			l.dispatch(n.Channel, n.Payload)
		}
		l.mu.Lock()
		l.interrupt = nil
		l.mu.Unlock()
	}
}

// dispatch hands a notification to the handlers of its channel.
func (l *listener) dispatch(channel, payload string) {
	l.mu.Lock()
	hs := make([]*handler, 0, len(l.handlers[channel]))
	for h := range l.handlers[channel] {
		hs = append(hs, h)
	}
	l.mu.Unlock()
	for _, h := range hs {
		h.notify(payload)
	}
}
