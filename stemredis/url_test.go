package stemredis

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
)

func TestParseConfigOptions(t *testing.T) {
	cfg, err := parseConfig("redis://user:s3cret@example.com:6390/7?dial_timeout=2s&result_ttl=90m&pool_size=4", stemdriver.Options{Namespace: "ns"})
	if err != nil {
		t.Fatalf("parseConfig: %v", err)
	}
	if cfg.addr != "example.com:6390" || cfg.redis.DB != 7 || cfg.redis.Username != "user" || cfg.redis.Password != "s3cret" {
		t.Errorf("addr %s db %d user %q password %q", cfg.addr, cfg.redis.DB, cfg.redis.Username, cfg.redis.Password)
	}
	if cfg.redis.DialTimeout != 2*time.Second || cfg.redis.PoolSize != 4 {
		t.Errorf("go-redis options not applied: dial_timeout %v pool_size %d", cfg.redis.DialTimeout, cfg.redis.PoolSize)
	}
	if cfg.resultTTL != 90*time.Minute || cfg.namespace != "ns" || cfg.redis.TLSConfig != nil {
		t.Errorf("result ttl %v namespace %q tls %v", cfg.resultTTL, cfg.namespace, cfg.redis.TLSConfig)
	}

	cfg, err = parseConfig("redis://localhost", stemdriver.Options{})
	if err != nil {
		t.Fatalf("parseConfig: %v", err)
	}
	if cfg.resultTTL != DefaultResultTTL || cfg.namespace != "stem" || cfg.addr != "localhost:6379" {
		t.Errorf("defaults: result ttl %v namespace %q addr %s", cfg.resultTTL, cfg.namespace, cfg.addr)
	}

	cfg, err = parseConfig("rediss://10.0.0.1:6380/0?tls_server_name=redis.internal&skip_verify=false", stemdriver.Options{})
	if err != nil {
		t.Fatalf("parseConfig rediss: %v", err)
	}
	if cfg.redis.TLSConfig == nil || cfg.redis.TLSConfig.ServerName != "redis.internal" {
		t.Errorf("TLS config %+v, want server name redis.internal", cfg.redis.TLSConfig)
	}
}

func TestParseConfigRejectsBadURLsWithoutShowingThePassword(t *testing.T) {
	for _, tc := range []struct {
		url, want string
	}{
		{"redis://:s3cret@localhost/0?bogus=1", "bogus"},
		{"redis://:s3cret@localhost/0?result_ttl=soon", "result_ttl"},
		{"redis://:s3cret@localhost/0?result_ttl=-1s", "result_ttl"},
		{"redis://:s3cret@localhost/0?tls_ca=/x.pem", "rediss"},
		{"rediss://:s3cret@localhost/0?tls_cert=/x.pem", "tls_key"},
		{"rediss://:s3cret@localhost/0?tls_ca=/does/not/exist.pem", "exist.pem"},
		{"http://:s3cret@localhost/0", "scheme"},
		{"redis://:s3cret@localhost/notanumber", "database"},
		{"redis://:s3cret@local host:99999/0", "invalid"},
		{"redis://:s3cret@localhost:bad/0", "invalid"},
		// A query that does not parse loses nothing silently.
		{"redis://:s3cret@localhost/0?result_ttl=1h;", "query"},
		{"redis://:s3cret@localhost/0?result_ttl=1%zz", "query"},
	} {
		_, err := parseConfig(tc.url, stemdriver.Options{})
		if err == nil {
			t.Errorf("parseConfig(%s) succeeded, want an error", tc.url)
			continue
		}
		msg := err.Error()
		if strings.Contains(msg, "s3cret") {
			t.Errorf("parseConfig(%s) error shows the password: %s", tc.url, msg)
		}
		if !strings.Contains(msg, tc.want) || !strings.HasPrefix(msg, "stem: ") {
			t.Errorf("parseConfig(%s) = %q, want a stem: error mentioning %q", tc.url, msg, tc.want)
		}
	}
}

func TestOpenUnreachableNamesHostNotPassword(t *testing.T) {
	// A port nobody listens on: take a free one and close it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	url := "redis://:s3cret@" + addr + "/0?max_retries=-1"
	opens := map[string]func() error{
		"broker":  func() error { _, err := OpenBroker(ctx, url, stemdriver.Options{}); return err },
		"results": func() error { _, err := OpenResults(ctx, url, stemdriver.Options{}); return err },
		"revokes": func() error { _, err := OpenRevokes(ctx, url, stemdriver.Options{}); return err },
		"control": func() error { _, err := OpenControl(ctx, url, stemdriver.Options{}); return err },
	}
	for role, open := range opens {
		err := open()
		if err == nil {
			t.Errorf("%s: opened an unreachable server", role)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, addr) || strings.Contains(msg, "s3cret") {
			t.Errorf("%s: error %q, want one naming %s without the password", role, msg, addr)
		}
	}
}
