package stemredis_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemredis"
	"github.com/stem-go/stem/stemtype"
)

// aclUsers creates on the test server the three users of
// docs/security.md (its ACL SETUSER lines, as written there) for namespace
// ns, each under a name of its own, deletes them when t ends, and returns
// each role's URL.
func aclUsers(t *testing.T, u, ns string) map[string]string {
	t.Helper()
	doc, err := os.ReadFile("../docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	opt, err := redis.ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	admin := redis.NewClient(opt)
	t.Cleanup(func() { _ = admin.Close() })
	ctx := context.Background()
	suffix := randHex(4)
	urls := map[string]string{}
	for _, line := range strings.Split(string(doc), "\n") {
		if !strings.HasPrefix(line, "ACL SETUSER stem-") {
			continue
		}
		f := strings.Fields(line)
		role := strings.TrimPrefix(f[2], "stem-")
		name, pw := "stem-"+role+"-"+suffix, randHex(12)
		r := strings.NewReplacer("<ns>", ns, "<db>", strconv.Itoa(opt.DB), "<password>", pw)
		args := []any{"ACL", "SETUSER", name}
		for _, a := range f[3:] {
			args = append(args, r.Replace(a))
		}
		if err := admin.Do(ctx, args...).Err(); err != nil {
			t.Fatalf("the %s line of docs/security.md: %v", role, err)
		}
		t.Cleanup(func() { _ = admin.Do(context.Background(), "ACL", "DELUSER", name).Err() })
		pu, _ := url.Parse(u)
		pu.User = url.UserPassword(name, pw)
		urls[role] = pu.String()
	}
	for _, role := range []string{"producer", "worker", "operator"} {
		if urls[role] == "" {
			t.Fatalf("docs/security.md has no ACL SETUSER line for stem-%s", role)
		}
	}
	return urls
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// noPerm fails t unless err is a refusal of the server's ACL.
func noPerm(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil || !(strings.Contains(err.Error(), "NOPERM") || strings.Contains(err.Error(), "can't access") || strings.Contains(err.Error(), "no permissions")) {
		t.Fatalf("%s: err = %v, want a permission error (NOPERM)", what, err)
	}
	// A refusal of the ACL is a configuration error: retrying cannot
	// help, so the CLI exits 78, not 69.
	if !errors.Is(err, stemdriver.ErrBadConfig) {
		t.Fatalf("%s: err = %v, want it to match stemdriver.ErrBadConfig", what, err)
	}
}

// TestACLRoles runs a deployment whose producer, worker and operator each
// connect as the Redis user docs/security.md gives them: the producer
// enqueues and reads states but can neither claim nor revoke (and its
// revoke stores nothing), the worker runs tasks, answers a ping and reads
// revokes but stores none and publishes nothing, and the operator revokes.
func TestACLRoles(t *testing.T) {
	u := testutil.NeedRedis(t)
	ns := "acl" + randHex(6)
	testutil.CleanupNamespace(t, u, ns)
	urls := aclUsers(t, u, ns)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opts := stemdriver.Options{Namespace: ns, Logger: quiet()}
	raw := func() *redis.Client {
		opt, _ := redis.ParseURL(u)
		c := redis.NewClient(opt)
		t.Cleanup(func() { _ = c.Close() })
		return c
	}()
	revokeKeys := func() int64 {
		t.Helper()
		n, err := raw.Exists(ctx, "stem:{"+ns+"}:revokes", "stem:{"+ns+"}:revokes:seq", "stem:{"+ns+"}:revokes:changes").Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	reg := stem.NewRegistry()
	stem.Register(reg, "acl.echo", func(_ *stem.TaskContext, a stem.Args) (any, error) { return a, nil }, stem.TaskOptions{Queue: "acl"})

	// The producer.
	pBroker := opened[*stemredis.Broker](t)(stemredis.OpenBroker(ctx, urls["producer"], opts))
	pResults := opened[*stemredis.Results](t)(stemredis.OpenResults(ctx, urls["producer"], opts))
	client, err := stem.NewClient(stem.ClientConfig{Broker: pBroker, Results: pResults, Registry: reg, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	id, err := client.Enqueue(ctx, "acl.echo", map[string]int{"n": 1}, stem.EnqueueOptions{})
	if err != nil {
		t.Fatalf("producer: Enqueue: %v", err)
	}
	if st, err := client.Status(ctx, id); err != nil || st.State != stemtype.StatePending {
		t.Fatalf("producer: Status = %+v, %v; want pending", st, err)
	}
	_, err = pBroker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"acl"}, Consumer: "p", Max: 1, Lease: time.Minute})
	noPerm(t, "producer: Claim", err)
	pRevokes := opened[*stemredis.Revokes](t)(stemredis.OpenRevokes(ctx, urls["producer"], opts))
	pControl := opened[*stemredis.Control](t)(stemredis.OpenControl(ctx, urls["producer"], opts))
	pCtl, err := stem.NewController(stem.ControllerConfig{Namespace: ns, Control: pControl, Revokes: pRevokes, Results: pResults, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = pCtl.Revoke(ctx, stem.Target{Timeout: time.Second}, stem.RevokeOptions{TaskIDs: []string{id}, Terminate: true})
	noPerm(t, "producer: Revoke --terminate", err)
	_, err = pCtl.Ping(ctx, stem.Target{Timeout: time.Second})
	noPerm(t, "producer: Ping", err)
	if n := revokeKeys(); n != 0 {
		t.Fatalf("the producer's revoke left %d revoke keys", n)
	}

	// The worker.
	wOpts := opts
	var wlog testutil.SyncBuffer
	wOpts.Logger = slog.New(slog.NewTextHandler(&wlog, &slog.HandlerOptions{Level: slog.LevelDebug}))
	wRevokes := opened[*stemredis.Revokes](t)(stemredis.OpenRevokes(ctx, urls["worker"], wOpts))
	wControl := opened[*stemredis.Control](t)(stemredis.OpenControl(ctx, urls["worker"], wOpts))
	w, err := stem.NewWorker(stem.WorkerConfig{
		ID: "acl-w1", Namespace: ns, Queues: []string{"acl"}, Registry: reg,
		Broker:             opened[*stemredis.Broker](t)(stemredis.OpenBroker(ctx, urls["worker"], wOpts)),
		Results:            opened[*stemredis.Results](t)(stemredis.OpenResults(ctx, urls["worker"], wOpts)),
		Revokes:            wRevokes,
		Control:            wControl,
		RevokeSyncInterval: 100 * time.Millisecond,
		Logger:             wOpts.Logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	wctx, stopWorker := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- w.Run(wctx) }()
	defer func() {
		stopWorker()
		if err := <-ran; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("worker: Run: %v", err)
		}
		if t.Failed() {
			t.Logf("worker log:\n%s", wlog.String())
		}
	}()
	waitCtx, cancelWait := context.WithTimeout(ctx, 30*time.Second)
	defer cancelWait()
	if res, err := client.Wait(waitCtx, id); err != nil || res.State != stemtype.StateSucceeded {
		t.Fatalf("producer: Wait = %+v, %v; want succeeded (the worker claimed, ran and acked it)", res, err)
	}
	_, err = wRevokes.Upsert(ctx, stemtype.RevokeRecord{Namespace: ns, TaskID: "by-worker", Version: 1})
	noPerm(t, "worker: Upsert", err)
	noPerm(t, "worker: Publish", wControl.Publish(ctx, nil, []byte(`{}`)))
	if n := revokeKeys(); n != 0 {
		t.Fatalf("the worker's revoke left %d revoke keys", n)
	}

	// The operator.
	oResults := opened[*stemredis.Results](t)(stemredis.OpenResults(ctx, urls["operator"], opts))
	oCtl, err := stem.NewController(stem.ControllerConfig{
		Namespace: ns, Logger: quiet(), Results: oResults,
		Control: opened[*stemredis.Control](t)(stemredis.OpenControl(ctx, urls["operator"], opts)),
		Revokes: opened[*stemredis.Revokes](t)(stemredis.OpenRevokes(ctx, urls["operator"], opts)),
	})
	if err != nil {
		t.Fatal(err)
	}
	pong, err := oCtl.Ping(ctx, stem.Target{Workers: []string{"acl-w1"}, Timeout: 10 * time.Second})
	if err != nil || len(pong.Replies) != 1 || pong.Replies[0].WorkerID != "acl-w1" {
		t.Fatalf("operator: Ping = %+v, %v; want acl-w1's reply", pong, err)
	}
	later, err := client.Enqueue(ctx, "acl.echo", map[string]int{"n": 2}, stem.EnqueueOptions{Countdown: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := oCtl.Revoke(ctx, stem.Target{Workers: []string{"acl-w1"}, Timeout: 10 * time.Second}, stem.RevokeOptions{TaskIDs: []string{later}, Terminate: true})
	if err != nil || len(rev.Records) != 1 || rev.Replies == nil || len(rev.Replies.Replies) != 1 {
		t.Fatalf("operator: Revoke = %+v, %v; want one record stored and acl-w1's reply", rev, err)
	}
	if ok, err := raw.HExists(ctx, "stem:{"+ns+"}:revokes", later).Result(); err != nil || !ok {
		t.Fatalf("the operator's revoke is not stored: %v, %v", ok, err)
	}
	// The worker re-reads the revoke store every 100ms with its read-only
	// user; a failed read would be logged as a failed re-sync.
	// Its prune is refused at every re-sync: it warns once, then says so
	// at debug level only, instead of a warning every RevokeSyncInterval.
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(wlog.String(), "prune expired revokes") < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the worker logged no three re-syncs with its prune refused")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := strings.Count(wlog.String(), `level=WARN msg="prune expired revokes`); n != 1 {
		t.Fatalf("the worker warned %d times of its refused prune, want once", n)
	}
	if log := wlog.String(); strings.Contains(log, "revoke re-sync failed") || strings.Contains(log, "level=ERROR") {
		t.Fatalf("the worker failed under its ACL user:\n%s", log)
	}
}
