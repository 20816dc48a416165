package stemredis

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"github.com/stem-go/stem/internal/testutil"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// TestRedissAllRoles starts a private TLS-only redis-server with a
// certificate signed by a CA made here, and runs every role over rediss://
// with that CA given by the tls_ca option.
func TestRedissAllRoles(t *testing.T) {
	server, err := exec.LookPath("redis-server")
	if err != nil {
		testutil.SkipOrFail(t, "redis-server not on PATH (needed for the rediss:// test): %v", err)
	}
	dir := t.TempDir()
	caFile, certFile, keyFile := writeTestPKI(t, dir)
	addr := startTLSRedis(t, server, dir, caFile, certFile, keyFile)
	ctx := testCtx(t)
	ns := "tls"
	url := "rediss://" + addr + "/0?tls_ca=" + caFile

	// Without the CA the server's certificate is not trusted.
	if _, err := OpenResults(ctx, "rediss://"+addr+"/0?max_retries=-1", stemdriver.Options{Namespace: ns}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("OpenResults without tls_ca = %v, want a certificate error", err)
	}

	b, err := OpenBroker(ctx, url, stemdriver.Options{Namespace: ns})
	if err != nil {
		t.Fatalf("OpenBroker: %v", err)
	}
	defer b.Close()
	if err := b.Publish(ctx, testEnvelopes("tls", "q", 2)...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	ds, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "c", Max: 2, Lease: time.Minute, Wait: time.Second})
	if err != nil || len(ds) != 2 {
		t.Fatalf("Claim = %d deliveries, %v; want 2", len(ds), err)
	}
	if err := b.Ack(ctx, ds...); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	if n, err := b.Depth(ctx, "q"); err != nil || n != 0 {
		t.Fatalf("Depth = %d, %v; want 0", n, err)
	}

	s, err := OpenRevokes(ctx, url, stemdriver.Options{})
	if err != nil {
		t.Fatalf("OpenRevokes: %v", err)
	}
	defer s.Close()
	rec := stemtype.RevokeRecord{Namespace: ns, TaskID: "tls-0", Version: 7, Reason: "tls"}
	if _, err := s.Upsert(ctx, rec); err != nil {
		t.Fatalf("Upsert: %v", err)
	}
	if recs, err := s.List(ctx, ns); err != nil || len(recs) != 1 || recs[0].Version != 7 {
		t.Fatalf("List = %+v, %v", recs, err)
	}

	r, err := OpenResults(ctx, url, stemdriver.Options{Namespace: ns})
	if err != nil {
		t.Fatalf("OpenResults: %v", err)
	}
	defer r.Close()
	if err := r.Put(ctx, &stemtype.TaskResult{ID: "tls-0", Task: "t", State: stemtype.StateSucceeded}); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if got, err := r.Get(ctx, "tls-0"); err != nil || got.State != stemtype.StateSucceeded {
		t.Fatalf("Get = %+v, %v", got, err)
	}

	c, err := OpenControl(ctx, url, stemdriver.Options{Namespace: ns})
	if err != nil {
		t.Fatalf("OpenControl: %v", err)
	}
	defer c.Close()
	sub, err := c.Subscribe(ctx, "w1")
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer sub.Close()
	if err := c.Publish(ctx, nil, []byte("ping")); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	select {
	case m := <-sub.C():
		if string(m) != "ping" {
			t.Fatalf("received %q, want ping", m)
		}
	case <-ctx.Done():
		t.Fatalf("no control message over TLS: %v", ctx.Err())
	}
}

// writeTestPKI writes a CA and a server certificate for 127.0.0.1 and
// localhost signed by it, and returns the files.
func writeTestPKI(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "stemredis test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("server.pem", "CERTIFICATE", der), write("server.key", "EC PRIVATE KEY", keyDER)
}

// startTLSRedis starts a TLS-only redis-server on a free loopback port and
// returns its address once it accepts TLS connections; it stops the server
// when t ends.
func startTLSRedis(t *testing.T, server, dir, caFile, certFile, keyFile string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	cmd := exec.Command(server,
		"--port", "0", "--tls-port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-ca-cert-file", caFile,
		"--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", dir,
		"--logfile", filepath.Join(dir, "redis.log"))
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := <-exited; err != nil {
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Errorf("redis-server: %v", err)
			}
		}
	})

	// Wait until the server completes a TLS handshake, or exits.
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(caPEM)
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
		if err == nil {
			_ = conn.Close()
			return addr
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			t.Fatalf("redis-server on %s did not accept TLS connections: %v\n%s", addr, err, log)
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			exited <- err
			t.Fatalf("redis-server exited: %v\n%s", err, log)
		case <-tick.C:
		}
	}
}
