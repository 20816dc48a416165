package e2e

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// TestRefusedByACLExits78: a command the server's ACL refuses (Redis
// NOPERM) is a configuration error, exit 78, never 69: scripts retry on
// 69, and no retry mends a permission. The user here may use every
// command but no key or channel of the deployment. Nothing is stored.
func TestRefusedByACLExits78(t *testing.T) {
	t.Parallel()
	c := newCluster(t, redisStore)
	opt, err := redis.ParseURL(c.url)
	if err != nil {
		t.Fatal(err)
	}
	admin := redis.NewClient(opt)
	t.Cleanup(func() { _ = admin.Close() })
	ctx := context.Background()
	name, pw := "stem-e2e-"+randomHex(4), randomHex(12)
	if err := admin.Do(ctx, "ACL", "SETUSER", name, "on", ">"+pw, "~elsewhere:*", "&elsewhere:*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Do(context.Background(), "ACL", "DELUSER", name).Err() })
	u, _ := url.Parse(c.url)
	u.User = url.UserPassword(name, pw)
	vars := map[string]string{"STEM_BROKER_URL": u.String()}

	for _, args := range [][]string{
		{"enqueue", "demo.echo", "--args", "{}"},
		{"worker", "revoke", "--task", "0123456789abcdef0123456789abcdef", "--terminate"},
		{"queue", "pause", "default"},
		{"task", "status", "0123456789abcdef0123456789abcdef"},
	} {
		r := c.runEnv(vars, args...)
		if r.code != 78 || !strings.Contains(r.stderr, "NOPERM") {
			t.Errorf("%s: want exit 78 naming the refusal (NOPERM)", r)
		}
		if strings.Contains(r.stdout+r.stderr, pw) {
			t.Errorf("%s: the password is printed", r)
		}
	}
	keys, err := admin.Keys(ctx, "*"+c.ns+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 0 {
		t.Errorf("refused commands left keys: %v", keys)
	}
}
