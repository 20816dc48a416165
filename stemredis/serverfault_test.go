package stemredis_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemredis"
)

// privateRedis is a redis-server of the test's own, on a loopback port of
// its own with its data in a temporary directory, that the test may kill
// and restart (the shared test server is never touched).
type privateRedis struct {
	t     *testing.T
	port  int
	dir   string
	fsync string
	cmd   *exec.Cmd
	exit  chan struct{}
}

var quietLibrary sync.Once

// privatePortBase is where the ports of private servers start; each test
// of this file has an offset of its own, and a port in use is skipped.
const privatePortBase = 16379

// startPrivateRedis starts a redis-server with an append-only file synced
// as fsync says (always, everysec), on the first free port from
// privatePortBase+offset, and stops it when t ends. It skips t when
// redis-server is not installed, unless services are required.
func startPrivateRedis(t *testing.T, offset int, fsync string) *privateRedis {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		testutil.SkipOrFail(t, "redis-server not installed: %v", err)
	}
	// go-redis logs every failed dial of the outage on its process-wide
	// logger: nothing a test reads.
	quietLibrary.Do(func() { stemredis.SetLibraryLogf(nil) })
	s := &privateRedis{t: t, dir: t.TempDir(), fsync: fsync}
	for p := privatePortBase + offset; p < privatePortBase+offset+40; p += 4 {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		_ = ln.Close()
		s.port = p
		if s.start() == nil {
			t.Cleanup(func() { s.kill(syscall.SIGKILL) })
			return s
		}
	}
	t.Fatal("no free port for a private redis-server")
	return nil
}

func (s *privateRedis) url() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", s.port) }

// start runs the server on s's port and directory (the same after a kill,
// so it reloads its append-only file) and waits until it answers.
func (s *privateRedis) start() error {
	s.cmd = exec.Command("redis-server", "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--dir", s.dir, "--appendonly", "yes", "--appendfsync", s.fsync, "--save", "",
		"--logfile", filepath.Join(s.dir, "redis.log"), "--protected-mode", "no")
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	s.exit = make(chan struct{})
	cmd, exit := s.cmd, s.exit
	go func() { _ = cmd.Wait(); close(exit) }()
	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", s.port), MaxRetries: -1, DialerRetries: 1})
	defer rdb.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-exit:
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			return fmt.Errorf("redis-server on port %d exited: %s", s.port, lastLines(string(log), 5))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := rdb.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.kill(syscall.SIGKILL)
			return fmt.Errorf("redis-server on port %d does not answer: %v", s.port, err)
		}
		time.Sleep(20 * time.Millisecond) // polling a state with a deadline
	}
}

// kill sends sig to the server and waits for it to exit.
func (s *privateRedis) kill(sig syscall.Signal) {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(sig)
	<-s.exit
	s.cmd = nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// outageRoles opens the broker and results of a fresh namespace on u.
func outageRoles(t *testing.T, u string) systemtest.Roles {
	t.Helper()
	ctx := context.Background()
	opts := stemdriver.Options{Namespace: "outage", Logger: quiet()}
	return systemtest.Roles{
		Broker:  opened[*stemredis.Broker](t)(stemredis.OpenBroker(ctx, u, opts)),
		Results: opened[*stemredis.Results](t)(stemredis.OpenResults(ctx, u, opts)),
	}
}

// faultOf returns an outage that stops s with sig, waits down, and
// starts it again on the same port and directory.
func faultOf(s *privateRedis, sig syscall.Signal, down time.Duration) func(t *testing.T) (time.Time, time.Time) {
	return func(t *testing.T) (time.Time, time.Time) {
		s.kill(sig)
		at := time.Now()
		time.Sleep(down) // the outage itself
		if err := s.start(); err != nil {
			t.Fatal(err)
		}
		return at, time.Now()
	}
}

// TestRedisKilledMidRun is the fault matrix row "Redis killed with SIGKILL
// and restarted mid-run": a private redis-server is killed while
// producers enqueue and a worker runs a few thousand tasks, and restarted
// on the same port and directory a second later.
//
// With appendfsync always every acknowledged write survives, so nothing
// is lost: every task whose Enqueue returned nil runs, within 20s of the
// restart (below the 30s lease, so no task waited for its lease: a claim
// whose reply the kill cut off is replayed with its token and returns its
// messages). With appendfsync everysec Redis itself may lose up to about a
// second of acknowledged writes: a task lost then was enqueued in the
// last two seconds before the kill (a second of fsync interval and a
// second of slack for a loaded machine), and its message is not in the
// stream (it was not stranded by a claim but never stored).
func TestRedisKilledMidRun(t *testing.T) {
	for i, fsync := range []string{"always", "everysec"} {
		t.Run(fsync, func(t *testing.T) {
			t.Parallel()
			s := startPrivateRedis(t, i, fsync)
			f := systemtest.RunOutage(t, systemtest.Outage{
				Roles: outageRoles(t, s.url()),
				Fault: faultOf(s, syscall.SIGKILL, time.Second),
			})
			lost := f.Lost
			if fsync == "everysec" {
				rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", s.port)})
				defer rdb.Close()
				stored, err := rdb.XRange(context.Background(), "stem:{outage:default}:stream", "-", "+").Result()
				if err != nil {
					t.Fatal(err)
				}
				inStream := make(map[string]bool)
				for _, e := range stored {
					for id := range lost {
						if m, _ := e.Values["msg"].(string); strings.Contains(m, id) {
							inStream[id] = true
						}
					}
				}
				lost = nil
				for id, at := range f.Lost {
					if inStream[id] || at.Before(f.Down.Add(-2*time.Second)) {
						if lost == nil {
							lost = make(map[string]time.Time)
						}
						lost[id] = at
					}
				}
				t.Logf("everysec: %d acknowledged tasks lost by the server with its last second of writes", len(f.Lost)-len(lost))
			}
			f.Lost = lost
			// 5s: the figure of the restart row; the kill row has none, and
			// the same bound holds. 20 failed claims: the worker's backoff
			// (100ms doubling to 5s) fails about 5 times in a second's
			// outage plus the reconnect.
			systemtest.CheckOutage(t, f, 5*time.Second, 20)
		})
	}
}

// TestRedisRestartedMidRun is the fault matrix row "broker restarted
// mid-run": a private redis-server (appendfsync always) is stopped
// (SIGTERM) while producers enqueue and a worker runs, and started again
// two seconds later. Producers get errors while it is down, never a
// silent drop: every Enqueue that returned nil ran. The worker consumes
// again within 5s of the server's return (the figure; the measure is
// from the first PING answered after the restart to the first task
// started, and includes the producers' own recovery), and its failed
// claims while down are few (backoff, not a hot loop).
func TestRedisRestartedMidRun(t *testing.T) {
	t.Parallel()
	s := startPrivateRedis(t, 2, "always")
	f := systemtest.RunOutage(t, systemtest.Outage{
		Roles: outageRoles(t, s.url()),
		Fault: faultOf(s, syscall.SIGTERM, 2*time.Second),
	})
	if f.Failed == 0 {
		t.Error("no Enqueue failed during a 2s outage: the producers did not meet it")
	}
	systemtest.CheckOutage(t, f, 5*time.Second, 20)
}
