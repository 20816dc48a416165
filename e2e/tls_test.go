package e2e

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/stem-go/stem/internal/testutil"
)

// tlsCluster returns a cluster of a namespace of its own whose every store
// is at u.
func tlsCluster(t *testing.T, u string) *cluster {
	ns := "e2e-" + randomHex(6)
	return &cluster{t: t, ns: ns, url: u, vars: map[string]string{"STEM_NAMESPACE": ns, "STEM_BROKER_URL": u}}
}

// runTLSCluster runs a worker and the CLI's enqueue, status, ping and
// revoke on c: a task runs, the ping is answered, a delayed task is revoked
// (stored, acknowledged by the worker) and marked cancelled.
func runTLSCluster(t *testing.T, c *cluster) *worker {
	t.Helper()
	w := c.startWorker("tls-w1") // polls `stem worker ping` until answered
	id := c.enqueue("demo.echo", `{"a":1}`)
	c.waitState(id, "succeeded")
	pong := c.replies("worker", "ping", "--worker", "tls-w1")
	only(t, pong, "tls-w1")
	later := c.enqueue("demo.echo", `{"a":2}`, "--countdown", "1h")
	rev := c.replies("worker", "revoke", "--task", later, "--worker", "tls-w1")
	only(t, rev, "tls-w1")
	c.waitState(later, "cancelled")
	return w
}

// TestRedissCLI runs `stem worker start`, `stem enqueue`, `stem worker
// ping` and `stem worker revoke` against a private TLS-only Redis through
// rediss:// with the test CA in tls_ca, and checks that without the CA the
// server is not trusted: exit 69 (cannot be reached) with the certificate
// error.
func TestRedissCLI(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, cert, key := testutil.WriteTestPKI(t, dir)
	addr := testutil.StartTLSRedis(t, dir, ca, cert, key)
	c := tlsCluster(t, "rediss://"+addr+"/0?tls_ca="+url.QueryEscape(ca))
	runTLSCluster(t, c)

	r := c.runEnv(map[string]string{"STEM_BROKER_URL": "rediss://" + addr + "/0"}, "enqueue", "demo.echo", "--args", "{}")
	if r.code != 69 || !strings.Contains(r.stderr, "certificate") {
		t.Fatalf("enqueue without tls_ca: want exit 69 and a certificate error, got %s", r)
	}
}

// loopbackAlias returns a host name that resolves to loopback addresses
// only but that stempostgres does not take for loopback by its spelling
// (not localhost, not an IP address): this host's name when /etc/hosts
// maps it so, else 0.0.0.0, which Linux connects to the local host.
func loopbackAlias() string {
	if h, err := os.Hostname(); err == nil && h != "localhost" && net.ParseIP(h) == nil {
		if ips, err := net.LookupIP(h); err == nil && len(ips) > 0 {
			all := true
			for _, ip := range ips {
				all = all && ip.IsLoopback()
			}
			if all {
				return h
			}
		}
	}
	return "0.0.0.0"
}

// TestPostgresTLSCLI runs the CLI against a private PostgreSQL that accepts
// TLS connections only (hostssl):
//   - with sslmode=verify-full and the test CA in sslrootcert, a worker
//     runs a task, answers a ping and honours a revoke;
//   - with sslmode=disable, enqueue and worker start fail with the
//     server's refusal, exit 78 (a configuration error: no retry mends it);
//   - with no sslmode (prefer) and a host name that is not literally
//     loopback, the connection works over TLS but stem warns that it could
//     fall back to plaintext;
//
// and the URL's password is printed by none of them.
func TestPostgresTLSCLI(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, cert, key := testutil.WriteTestPKI(t, dir)
	port := testutil.StartTLSPostgres(t, cert, key)
	secret := "pw" + randomHex(8)
	base := func(host string) string {
		return fmt.Sprintf("postgres://postgres:%s@%s/postgres", secret, net.JoinHostPort(host, fmt.Sprint(port)))
	}
	var outputs []string
	check := func(r result) result {
		outputs = append(outputs, r.stdout, r.stderr)
		return r
	}

	c := tlsCluster(t, base("127.0.0.1")+"?sslmode=verify-full&sslrootcert="+url.QueryEscape(ca))
	w := runTLSCluster(t, c)
	if strings.Contains(w.stderr.String(), "plaintext") {
		t.Errorf("the worker warned of plaintext with sslmode=verify-full:\n%s", w.stderr)
	}

	plain := map[string]string{"STEM_BROKER_URL": base("127.0.0.1") + "?sslmode=disable"}
	r := check(c.runEnv(plain, "enqueue", "demo.echo", "--args", "{}"))
	// The refusal is no wrong password: the message says what to change.
	if r.code != 78 || !strings.Contains(r.stderr, "no encryption") || strings.Contains(r.stderr, "credentials") || !strings.Contains(r.stderr, "without TLS: set sslmode=require") {
		t.Fatalf("enqueue with sslmode=disable: want exit 78 and the server's refusal of a connection without encryption, got %s", r)
	}
	pw := c.spawnWorker(plain, "tls-plain")
	if code := pw.wait(t); code != 78 || !strings.Contains(pw.stderr.String(), "no encryption") {
		t.Fatalf("worker start with sslmode=disable: exit %d, want 78 and the server's refusal:\n%s", code, pw.stderr)
	}
	outputs = append(outputs, pw.stderr.String())

	alias := loopbackAlias()
	r = check(c.runEnv(map[string]string{"STEM_BROKER_URL": base(alias)}, "enqueue", "demo.echo", "--args", "{}"))
	if r.code != 0 || !strings.Contains(r.stderr, "fall back to plaintext") || !strings.Contains(r.stderr, "postgres://"+net.JoinHostPort(alias, fmt.Sprint(port))+"/postgres") {
		t.Fatalf("enqueue on %s without sslmode: want exit 0 and the plaintext warning naming the URL without its password, got %s", alias, r)
	}

	outputs = append(outputs, w.stderr.String())
	for _, out := range outputs {
		if strings.Contains(out, secret) {
			t.Fatalf("the URL's password was printed:\n%s", out)
		}
	}
}
