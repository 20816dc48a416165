package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// ceilingSystem is the bare Redis stream consumer of PERFORMANCE.md's "The
// ceiling": not a product (no retries, leases, revokes or states), the
// least a queue on Redis Streams must do per task, to tell how much of a
// real queue's cost is its own. Tasks are JSON messages XADDed to one
// stream (pipelined, 500 a round trip, for the drain); one consumer group;
// a reader takes up to 200 at a time with XREADGROUP BLOCK and hands them
// to C handler goroutines, which decode the JSON; completions are flushed
// every 200 tasks or 2 ms as one pipeline of XACK, XDEL and a result SET
// with a TTL per task.
type ceilingSystem struct {
	p      *probe
	rdb    *redis.Client
	stream string
	prefix string
	seq    atomic.Int64

	stop context.CancelFunc
	wg   sync.WaitGroup
	err  error // the reader's or flusher's failure, read after wg.Wait
	mu   sync.Mutex
}

const (
	ceilingGroup = "g"
	ceilingRead  = 200
	ceilingFlush = 200
	ceilingEvery = 2 * time.Millisecond
)

// ceilingMsg is one task message.
type ceilingMsg struct {
	ID   string          `json:"id"`
	Task string          `json:"task"`
	Args json.RawMessage `json:"args"`
}

func openCeiling(ctx context.Context, rawURL string, p *probe) (*ceilingSystem, error) {
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("ceiling: %w", err)
	}
	rdb := redis.NewClient(opt)
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, fmt.Errorf("ceiling: %w", err)
	}
	run := fmt.Sprintf("peers-ceiling-%d", time.Now().UnixNano())
	return &ceilingSystem{p: p, rdb: rdb, stream: run + ":s", prefix: run + ":r:"}, nil
}

// Backend implements system.
func (s *ceilingSystem) Backend() string { return "redis" }

func (s *ceilingSystem) message(task string) ([]byte, string) {
	id := strconv.FormatInt(s.seq.Add(1), 10)
	b, _ := json.Marshal(ceilingMsg{ID: id, Task: task, Args: json.RawMessage(`{"n":1}`)})
	return b, id
}

// EnqueueNoops implements system: XADD pipelined, batch per round trip.
func (s *ceilingSystem) EnqueueNoops(ctx context.Context, n, batch int) error {
	for done := 0; done < n; {
		pipe := s.rdb.Pipeline()
		for i := 0; i < batch && done < n; i++ {
			b, _ := s.message("noop")
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: s.stream, Values: []any{"m", b}})
			done++
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
	}
	return nil
}

// EnqueueNoop implements system: one XADD.
func (s *ceilingSystem) EnqueueNoop(ctx context.Context) error {
	b, _ := s.message("noop")
	return s.rdb.XAdd(ctx, &redis.XAddArgs{Stream: s.stream, Values: []any{"m", b}}).Err()
}

// EnqueuePickup implements system.
func (s *ceilingSystem) EnqueuePickup(ctx context.Context) error {
	b, _ := s.message("pickup")
	return s.rdb.XAdd(ctx, &redis.XAddArgs{Stream: s.stream, Values: []any{"m", b}}).Err()
}

var errNoCancel = errors.New("the ceiling has no cancel: it is not a product")

// EnqueueLong implements system: not supported.
func (s *ceilingSystem) EnqueueLong(context.Context) (string, error) { return "", errNoCancel }

// Cancel implements system: not supported.
func (s *ceilingSystem) Cancel(context.Context, string) error { return errNoCancel }

// Outcome implements system: not supported.
func (s *ceilingSystem) Outcome(context.Context, string) (bool, error) { return false, errNoCancel }

// Start implements system: the group, the reader, c handlers, the flusher.
func (s *ceilingSystem) Start(ctx context.Context, c int) error {
	if s.stop != nil {
		return errors.New("consumer already started")
	}
	err := s.rdb.XGroupCreateMkStream(ctx, s.stream, ceilingGroup, "0").Err()
	if err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP") {
		return err
	}
	rctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stop = stop
	work := make(chan redis.XMessage, ceilingRead)
	done := make(chan string, ceilingRead)
	var handlers sync.WaitGroup
	for range c {
		handlers.Go(func() {
			for m := range work {
				var msg ceilingMsg
				raw, _ := m.Values["m"].(string)
				if err := json.Unmarshal([]byte(raw), &msg); err == nil {
					switch msg.Task {
					case "noop":
						s.p.noop()
					case "pickup":
						s.p.pickedUp()
					}
				}
				done <- m.ID
			}
		})
	}
	s.wg.Go(func() {
		defer func() { close(work); handlers.Wait(); close(done) }()
		for rctx.Err() == nil {
			res, err := s.rdb.XReadGroup(rctx, &redis.XReadGroupArgs{Group: ceilingGroup, Consumer: "c",
				Streams: []string{s.stream, ">"}, Count: ceilingRead, Block: time.Second}).Result()
			if err != nil {
				if errors.Is(err, redis.Nil) || rctx.Err() != nil {
					continue
				}
				s.fail(err)
				return
			}
			for _, st := range res {
				for _, m := range st.Messages {
					work <- m
				}
			}
		}
	})
	s.wg.Go(func() { s.flusher(done) })
	return nil
}

// flusher acknowledges, deletes and records completed tasks in pipelines
// of up to ceilingFlush tasks, at least every ceilingEvery.
func (s *ceilingSystem) flusher(done <-chan string) {
	ctx := context.Background()
	var ids []string
	flush := func() {
		if len(ids) == 0 {
			return
		}
		pipe := s.rdb.Pipeline()
		pipe.XAck(ctx, s.stream, ceilingGroup, ids...)
		pipe.XDel(ctx, s.stream, ids...)
		for _, id := range ids {
			pipe.Set(ctx, s.prefix+id, `{"state":"succeeded"}`, time.Hour)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			s.fail(err)
		}
		ids = ids[:0]
	}
	t := time.NewTicker(ceilingEvery)
	defer t.Stop()
	for {
		select {
		case id, ok := <-done:
			if !ok {
				flush()
				return
			}
			if ids = append(ids, id); len(ids) >= ceilingFlush {
				flush()
			}
		case <-t.C:
			flush()
		}
	}
}

func (s *ceilingSystem) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = errors.Join(s.err, err)
}

// Stop implements system: stops reading, lets the handlers finish and
// flushes their completions.
func (s *ceilingSystem) Stop(context.Context) error {
	if s.stop == nil {
		return nil
	}
	s.stop()
	s.wg.Wait()
	s.stop = nil
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// CheckDrained implements system: the stream is empty and nothing is
// pending in the group.
func (s *ceilingSystem) CheckDrained(ctx context.Context, n int) error {
	l, err := s.rdb.XLen(ctx, s.stream).Result()
	if err != nil {
		return err
	}
	pend, err := s.rdb.XPending(ctx, s.stream, ceilingGroup).Result()
	if err != nil {
		return err
	}
	if l != 0 || pend.Count != 0 {
		return fmt.Errorf("%d of %d messages left in the stream, %d pending, after the drain", l, n, pend.Count)
	}
	return nil
}

// Close implements system: deletes the stream and the results.
func (s *ceilingSystem) Close(ctx context.Context) error {
	err := s.Stop(ctx)
	iter := s.rdb.Scan(ctx, 0, s.prefix+"*", 1000).Iterator()
	keys := []string{s.stream}
	for iter.Next(ctx) {
		if keys = append(keys, iter.Val()); len(keys) >= 1000 {
			err = errors.Join(err, s.rdb.Unlink(ctx, keys...).Err())
			keys = keys[:0]
		}
	}
	err = errors.Join(err, iter.Err())
	if len(keys) > 0 {
		err = errors.Join(err, s.rdb.Unlink(ctx, keys...).Err())
	}
	return errors.Join(err, s.rdb.Close())
}
