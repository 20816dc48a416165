package stemurl_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
	"github.com/stem-go/stem/stemurl"
)

func TestFromEnvResolutionOrder(t *testing.T) {
	const b, r, s = "redis://broker/0", "redis://results/1", "file:///var/lib/stem/revokes"
	def := stemurl.Default(func(string) string { return "" }) // no state directory in these environments
	for _, tc := range []struct {
		name                string
		env                 map[string]string
		broker, res, revoke string
		from                string
	}{
		{"nothing set", nil, def, def, def, "default"},
		{"broker only", map[string]string{stemurl.EnvBroker: b}, b, b, b, stemurl.EnvBroker},
		{"results only", map[string]string{stemurl.EnvResults: r}, def, r, r, stemurl.EnvResults},
		{"broker and results", map[string]string{stemurl.EnvBroker: b, stemurl.EnvResults: r}, b, r, r, stemurl.EnvResults},
		{"revoke store only", map[string]string{stemurl.EnvRevokeStore: s}, def, def, s, stemurl.EnvRevokeStore},
		{"revoke store and broker", map[string]string{stemurl.EnvRevokeStore: s, stemurl.EnvBroker: b}, b, b, s, stemurl.EnvRevokeStore},
		{"all three", map[string]string{stemurl.EnvRevokeStore: s, stemurl.EnvResults: r, stemurl.EnvBroker: b}, b, r, s, stemurl.EnvRevokeStore},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := stemurl.FromEnv(func(k string) string { return tc.env[k] })
			if u.Broker != tc.broker || u.Results != tc.res || u.Revokes != tc.revoke || u.RevokesFrom != tc.from {
				t.Fatalf("got %+v, want broker %s results %s revokes %s from %s", u, tc.broker, tc.res, tc.revoke, tc.from)
			}
		})
	}
}

func TestUnknownSchemeIsAnError(t *testing.T) {
	r := stemurl.New()
	ctx := context.Background()
	opts := stemdriver.Options{Namespace: "t"}
	if _, err := r.OpenBroker(ctx, "amqp://guest:secret@localhost", opts); err == nil ||
		!strings.Contains(err.Error(), "unsupported broker URL") || strings.Contains(err.Error(), "secret") {
		t.Fatalf("OpenBroker(amqp): %v", err)
	}
	if _, err := r.OpenRevokes(ctx, "ftp://x/y", opts); err == nil || !strings.Contains(err.Error(), "revoke store") {
		t.Fatalf("OpenRevokes(ftp): %v", err)
	}
	if _, err := r.OpenBroker(ctx, "/var/lib/stem/revokes", opts); err == nil {
		t.Fatal("a bare path opened as a broker")
	}
}

func TestMemoryURLsShareOneHubPerName(t *testing.T) {
	r := stemurl.New()
	ctx := context.Background()
	opts := stemdriver.Options{Namespace: "t"}
	open := func(u string) stemdriver.Broker {
		b, err := r.OpenBroker(ctx, u, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}
	pub, same, other := open("memory://"), open("memory://"), open("memory://other")
	env := &stemtype.Envelope{ID: "1", Task: "x", Queue: "q", CreatedAt: time.Now()}
	if err := pub.Publish(ctx, env); err != nil {
		t.Fatal(err)
	}
	if n, _ := same.Depth(ctx, "q"); n != 1 {
		t.Fatalf("memory:// opened twice: depth %d, want 1 (one hub)", n)
	}
	if n, _ := other.Depth(ctx, "q"); n != 0 {
		t.Fatalf("memory://other sees memory://'s queue: depth %d", n)
	}
}

func TestRedact(t *testing.T) {
	if got := stemurl.Redact("redis://user:pw@host:6379/0"); strings.Contains(got, "pw") || !strings.Contains(got, "user") {
		t.Fatalf("Redact = %s", got)
	}
	if got := stemurl.Redact("memory://"); got != "memory://" {
		t.Fatalf("Redact = %s", got)
	}
}

func TestRevokeFileURLForms(t *testing.T) {
	r := stemurl.New()
	ctx := context.Background()
	dir := t.TempDir()
	for _, u := range []string{
		"file://" + dir + "/a.ndjson",
		"file:" + dir + "/b.ndjson",
		dir + "/c:d.ndjson",
		dir + "/e.ndjson",
	} {
		s, err := r.OpenRevokes(ctx, u, stemdriver.Options{})
		if err != nil {
			t.Errorf("OpenRevokes(%q): %v", u, err)
			continue
		}
		s.Close()
	}
	if _, err := r.OpenRevokes(ctx, "redis:6379", stemdriver.Options{}); err == nil {
		t.Error("a mistyped URL was taken for a file name")
	}
}
