// Package testutil holds what stem's test suites share: the test Redis's
// address, the skip-or-fail rule for tests that need a service, and a
// goroutine-safe buffer for a process's output.
//
// A test that needs an unreachable service skips with a message naming the
// variable to set, except when STEM_TEST_REQUIRE_SERVICES=1 (as in CI),
// where it fails instead.
package testutil

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Environment variables of the test suites.
const (
	EnvRedisURL        = "STEM_TEST_REDIS_URL"
	EnvRequireServices = "STEM_TEST_REQUIRE_SERVICES"
)

// DefaultRedisURL is the test Redis when EnvRedisURL is not set: database
// 15 of the local server.
const DefaultRedisURL = "redis://127.0.0.1:6379/15"

// RedisURL returns the test Redis's URL.
func RedisURL() string {
	if u := os.Getenv(EnvRedisURL); u != "" {
		return u
	}
	return DefaultRedisURL
}

// PingRedis reports whether the Redis at url answers a PING within three
// seconds.
func PingRedis(url string) error {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return err
	}
	c := redis.NewClient(opts)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return c.Ping(ctx).Err()
}

// RequireServices reports whether tests must fail, not skip, for want of a
// service.
func RequireServices() bool { return os.Getenv(EnvRequireServices) == "1" }

// SkipOrFail skips tb for want of a service, or fails it when services are
// required.
func SkipOrFail(tb testing.TB, format string, args ...any) {
	tb.Helper()
	if RequireServices() {
		tb.Fatalf(format, args...)
	}
	tb.Skipf(format, args...)
}

var redisOnce struct {
	sync.Once
	err error
}

// NeedRedis returns the test Redis's URL, or skips tb (fails it, when
// services are required) when that Redis does not answer. The server is
// pinged once per process.
func NeedRedis(tb testing.TB) string {
	tb.Helper()
	u := RedisURL()
	redisOnce.Do(func() { redisOnce.err = PingRedis(u) })
	if redisOnce.err != nil {
		SkipOrFail(tb, "Redis at %s unreachable (set %s): %v", redactedHost(u), EnvRedisURL, redisOnce.err)
	}
	return u
}

func redactedHost(u string) string {
	opts, err := redis.ParseURL(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return fmt.Sprintf("%s db %d", opts.Addr, opts.DB)
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers and readers,
// such as a child process's output read by a test.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// CleanupNamespace deletes, when tb ends, every stem key of namespace ns in
// the Redis at url, so that repeated runs against one server never collide.
func CleanupNamespace(tb testing.TB, url, ns string) {
	tb.Cleanup(func() {
		opts, err := redis.ParseURL(url)
		if err != nil {
			return
		}
		c := redis.NewClient(opts)
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var keys []string
		iter := c.Scan(ctx, 0, "stem:*"+ns+"*", 500).Iterator()
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		if len(keys) > 0 {
			c.Del(ctx, keys...)
		}
	})
}
