package stem_test

import (
	"context"
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

// A message that does not decode as an envelope, written into a queue's
// stream by a foreign or broken producer, is dead-lettered with the reason
// and recorded as a failure of the task it names; the worker keeps working.
func TestRedisUndecodableMessageIsDeadLettered(t *testing.T) {
	url := testutil.NeedRedis(t)
	ctx := context.Background()
	ns := "t-undecodable-" + stem.NewTaskID()[:8]
	opts := stemdriver.Options{Namespace: ns, Logger: quiet()}
	br, err := stemredis.OpenBroker(ctx, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer br.Close()
	res, err := stemredis.OpenResults(ctx, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	ropt, _ := redis.ParseURL(url)
	rdb := redis.NewClient(ropt)
	defer rdb.Close()
	prefix := "stem:{" + ns + ":default}:"
	testutil.CleanupNamespace(t, url, ns)
	// Make sure the stream and group exist before the foreign write.
	if _, err := br.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"default"}, Consumer: "probe", Max: 1, Lease: time.Second}); err != nil {
		t.Fatal(err)
	}
	bad := `{"id":"bad-1","task":"echo","attempt":"zero"}`
	if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: prefix + "stream", Values: []string{"msg", bad}}).Err(); err != nil {
		t.Fatal(err)
	}
	reg := stem.NewRegistry()
	stem.Register(reg, "echo", func(*stem.TaskContext, stem.Args) (any, error) { return "ok", nil }, stem.TaskOptions{})
	w, err := stem.NewWorker(stem.WorkerConfig{Namespace: ns, Registry: reg, Broker: br, Results: res,
		Logger: quiet(), ClaimWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	defer func() { stop(); <-done }()

	client, _ := stem.NewClient(stem.ClientConfig{Broker: br, Results: res})
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	got, err := client.Wait(cctx, "bad-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != stemtype.StateFailed || got.Error == nil || got.Error.Kind != "decode" {
		t.Fatalf("undecodable task recorded as %+v (%+v)", got, got.Error)
	}
	// The result is written before the delivery is dead-lettered: wait for
	// the dead letter (XREAD blocks until the stream has an entry).
	if err := rdb.XRead(cctx, &redis.XReadArgs{Streams: []string{prefix + "dead", "0-0"}, Count: 1, Block: 30 * time.Second}).Err(); err != nil {
		t.Fatalf("no dead letter: %v", err)
	}
	dead, err := rdb.XRange(ctx, prefix+"dead", "-", "+").Result()
	if err != nil || len(dead) != 1 || dead[0].Values["msg"] != bad || !strings.Contains(dead[0].Values["reason"].(string), "undecodable") {
		t.Fatalf("dead letters: %+v %v", dead, err)
	}
	// The worker keeps working.
	id, _ := client.Enqueue(ctx, "echo", nil, stem.EnqueueOptions{})
	if r, err := client.Wait(cctx, id); err != nil || r.State != stemtype.StateSucceeded {
		t.Fatalf("after the dead letter: %+v %v", r, err)
	}
}
