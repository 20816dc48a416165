package stemredis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/isolated"
	"github.com/stem-go/stem/stemdriver"
)

// TestMain serves the child role of the system suite's isolated tasks when
// a Pool re-executed the test binary, and otherwise checks that no test
// leaves a goroutine behind.
func TestMain(m *testing.M) {
	isolated.ServeIfChild(systemtest.Registry())
	goleak.VerifyTestMain(m)
}

// rawClient returns a plain go-redis client on the test server, for
// looking at keys behind the driver's back; it skips t when the server is
// unreachable.
func rawClient(t testing.TB) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(testutil.RedisURL())
	if err != nil {
		t.Fatalf("STEM_TEST_REDIS_URL: %v", err)
	}
	opt.DialerRetries, opt.MaxRetries = 1, -1 // an unreachable server fails fast
	rdb := redis.NewClient(opt)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = rdb.Close()
		testutil.SkipOrFail(t, "Redis unreachable at %s (set STEM_TEST_REDIS_URL): %v", opt.Addr, err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// newNS returns a namespace no other test uses and deletes its keys when t
// ends.
func newNS(t testing.TB) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	ns := "rt" + hex.EncodeToString(b[:])
	cleanupNS(t, ns)
	return ns
}

// cleanupNS deletes every key of namespace ns when t ends.
func cleanupNS(t testing.TB, ns string) {
	t.Helper()
	rdb := rawClient(t)
	t.Cleanup(func() { deleteNSKeys(t, rdb, ns) })
}

// deleteNSKeys deletes the keys of namespace ns: stem:{ns:...}, stem:{ns}:...
// and stem:ns:....
func deleteNSKeys(t testing.TB, rdb *redis.Client, ns string) {
	t.Helper()
	ctx := context.Background()
	e := globEscape(escape(ns))
	for _, pattern := range []string{"stem:{" + e + ":*", "stem:{" + e + "}*", "stem:" + e + ":*"} {
		iter := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		if err := iter.Err(); err != nil {
			t.Errorf("scan %s: %v", pattern, err)
			continue
		}
		for len(keys) > 0 {
			n := min(len(keys), 500)
			if err := rdb.Del(ctx, keys[:n]...).Err(); err != nil {
				t.Errorf("delete keys of namespace %s: %v", ns, err)
			}
			keys = keys[n:]
		}
	}
}

// globEscape escapes the glob characters of SCAN MATCH.
func globEscape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`, `]`, `\]`)
	return r.Replace(s)
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func openTestBroker(t testing.TB, ns string) *Broker {
	t.Helper()
	rawClient(t) // skips when the server is unreachable
	b, err := OpenBroker(testCtx(t), testutil.RedisURL(), stemdriver.Options{Namespace: ns})
	if err != nil {
		t.Fatalf("OpenBroker: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func openTestResults(t testing.TB, ns string, query string) *Results {
	t.Helper()
	rawClient(t)
	u := testutil.RedisURL()
	if query != "" {
		if strings.Contains(u, "?") {
			u += "&" + query
		} else {
			u += "?" + query
		}
	}
	r, err := OpenResults(testCtx(t), u, stemdriver.Options{Namespace: ns})
	if err != nil {
		t.Fatalf("OpenResults: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func openTestRevokes(t testing.TB) *Revokes {
	t.Helper()
	rawClient(t)
	s, err := OpenRevokes(testCtx(t), testutil.RedisURL(), stemdriver.Options{})
	if err != nil {
		t.Fatalf("OpenRevokes: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func openTestControl(t testing.TB, ns string) *Control {
	t.Helper()
	rawClient(t)
	c, err := OpenControl(testCtx(t), testutil.RedisURL(), stemdriver.Options{Namespace: ns})
	if err != nil {
		t.Fatalf("OpenControl: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
