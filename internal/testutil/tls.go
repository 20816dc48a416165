package testutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// WriteTestPKI writes a CA and a server certificate for 127.0.0.1 and
// localhost signed by it, valid for an hour, and returns the files.
func WriteTestPKI(tb testing.TB, dir string) (caFile, certFile, keyFile string) {
	tb.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "stem test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		tb.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
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
		tb.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			tb.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("server.pem", "CERTIFICATE", der), write("server.key", "EC PRIVATE KEY", keyDER)
}

// freePort returns a loopback TCP port nothing listens on right now.
func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// StartTLSRedis starts a private TLS-only redis-server on a free loopback
// port, with its files in dir, and returns its address once it completes a
// TLS handshake; it stops the server when tb ends. It skips tb (fails it
// under STEM_TEST_REQUIRE_SERVICES=1) when redis-server is not on PATH or
// was built without TLS.
func StartTLSRedis(tb testing.TB, dir, caFile, certFile, keyFile string) string {
	tb.Helper()
	server, err := exec.LookPath("redis-server")
	if err != nil {
		SkipOrFail(tb, "redis-server not on PATH (needed for a rediss:// test): %v", err)
	}
	port := freePort(tb)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	cmd := exec.Command(server,
		"--port", "0", "--tls-port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-ca-cert-file", caFile,
		"--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", dir,
		"--logfile", filepath.Join(dir, "redis.log"))
	var stderr SyncBuffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start redis-server: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tb.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := <-exited; err != nil {
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				tb.Errorf("redis-server: %v", err)
			}
		}
	})
	output := func() string {
		log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
		return stderr.String() + string(log)
	}

	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		tb.Fatal(err)
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
			tb.Fatalf("redis-server on %s did not accept TLS connections: %v\n%s", addr, err, output())
		}
		select {
		case err := <-exited:
			exited <- err
			if out := output(); strings.Contains(out, "tls") && (strings.Contains(out, "Bad directive") || strings.Contains(out, "not supported")) {
				SkipOrFail(tb, "redis-server was built without TLS (needed for a rediss:// test):\n%s", out)
			}
			tb.Fatalf("redis-server exited: %v\n%s", err, output())
		case <-tick.C:
		}
	}
}

// postgresBin returns the directory of PostgreSQL's server programs
// (initdb, pg_ctl), or "".
func postgresBin() string {
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p)
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i]
		}
	}
	return ""
}

// StartTLSPostgres starts a private PostgreSQL on a free loopback port that
// accepts TLS connections only (hostssl, trust authentication, ssl=on with
// certFile and keyFile), and returns its port once it runs; it stops the
// server and deletes its files when tb ends. Run as root, it runs the
// server as the user postgres (initdb refuses root). It skips tb (fails it
// under STEM_TEST_REQUIRE_SERVICES=1) when initdb is not installed or
// cannot run.
func StartTLSPostgres(tb testing.TB, certFile, keyFile string) int {
	tb.Helper()
	bin := postgresBin()
	if bin == "" {
		SkipOrFail(tb, "initdb not found on PATH or in /usr/lib/postgresql/*/bin (needed for a private TLS PostgreSQL)")
	}
	base, err := os.MkdirTemp("", "stem-pgtls-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(base) })
	var owner *user.User
	if os.Geteuid() == 0 {
		if owner, err = user.Lookup("postgres"); err != nil {
			SkipOrFail(tb, "running as root and there is no user postgres to run a private PostgreSQL: %v", err)
		}
		uid, _ := strconv.Atoi(owner.Uid)
		gid, _ := strconv.Atoi(owner.Gid)
		if err := os.Chmod(base, 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.Chown(base, uid, gid); err != nil {
			tb.Fatal(err)
		}
	}
	run := func(args ...string) error {
		var cmd *exec.Cmd
		if owner != nil {
			quoted := make([]string, len(args))
			for i, a := range args {
				quoted[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
			}
			cmd = exec.Command("su", "postgres", "-s", "/bin/sh", "-c", strings.Join(quoted, " "))
		} else {
			cmd = exec.Command(args[0], args[1:]...)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	data := filepath.Join(base, "data")
	if err := run(filepath.Join(bin, "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "-N"); err != nil {
		SkipOrFail(tb, "initdb cannot make a private PostgreSQL: %v", err)
	}
	// The server reads its key as its own user, 0600.
	for src, dst := range map[string]string{certFile: "server.crt", keyFile: "server.key"} {
		b, err := os.ReadFile(src)
		if err != nil {
			tb.Fatal(err)
		}
		p := filepath.Join(data, dst)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			tb.Fatal(err)
		}
		if owner != nil {
			uid, _ := strconv.Atoi(owner.Uid)
			gid, _ := strconv.Atoi(owner.Gid)
			if err := os.Chown(p, uid, gid); err != nil {
				tb.Fatal(err)
			}
		}
	}
	port := freePort(tb)
	conf := fmt.Sprintf("\nlisten_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\n"+
		"ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nfsync = off\nmax_connections = 40\n", port, base)
	appendFile := func(name, s string, truncate bool) {
		flag := os.O_WRONLY | os.O_APPEND
		if truncate {
			flag = os.O_WRONLY | os.O_TRUNC
		}
		f, err := os.OpenFile(filepath.Join(data, name), flag, 0)
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := f.WriteString(s); err != nil {
			tb.Fatal(err)
		}
		if err := f.Close(); err != nil {
			tb.Fatal(err)
		}
	}
	appendFile("postgresql.conf", conf, false)
	appendFile("pg_hba.conf", "local all all trust\nhostssl all all 127.0.0.1/32 trust\n", true)
	pgctl := filepath.Join(bin, "pg_ctl")
	if err := run(pgctl, "-D", data, "-l", filepath.Join(base, "server.log"), "-w", "-t", "30", "start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(base, "server.log"))
		tb.Fatalf("start a private PostgreSQL: %v\n%s", err, log)
	}
	tb.Cleanup(func() {
		if err := run(pgctl, "-D", data, "-m", "immediate", "-w", "stop"); err != nil {
			tb.Errorf("stop the private PostgreSQL: %v", err)
		}
	})
	return port
}
