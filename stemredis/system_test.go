package stemredis_test

import (
	"context"
	"io"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemredis"
	"github.com/stem-go/stem/stemtype"
)

// TestSystem runs the system suite on the test Redis (database 15); each
// case's namespace is deleted when the case ends. The other scope of the
// scope isolation case is another database of the same server, where
// pub/sub, which ignores databases, is the channel that could cross.
func TestSystem(t *testing.T) {
	u := testutil.NeedRedis(t)
	other := otherDatabase(t, u)
	systemtest.Run(t, systemtest.Harness{
		Open:          func(t *testing.T, namespace string) systemtest.Roles { return roles(t, u, namespace) },
		OpenElsewhere: func(t *testing.T, namespace string) systemtest.Roles { return roles(t, other, namespace) },
	})
}

// roles opens the four roles of namespace on the Redis at u, closes them
// when t ends, then deletes the namespace's keys.
func roles(t *testing.T, u, namespace string) systemtest.Roles {
	t.Helper()
	testutil.CleanupNamespace(t, u, namespace) // runs after the Closes below
	ctx := context.Background()
	opts := stemdriver.Options{Namespace: namespace, Logger: quiet()}
	return systemtest.Roles{
		Broker:  opened[*stemredis.Broker](t)(stemredis.OpenBroker(ctx, u, opts)),
		Results: opened[*stemredis.Results](t)(stemredis.OpenResults(ctx, u, opts)),
		Revokes: opened[*stemredis.Revokes](t)(stemredis.OpenRevokes(ctx, u, opts)),
		Control: opened[*stemredis.Control](t)(stemredis.OpenControl(ctx, u, opts)),
	}
}

// otherDatabase returns u with another database of the same server: 14,
// or 13 when u is on 14.
func otherDatabase(t *testing.T, u string) string {
	t.Helper()
	opts, err := redis.ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	db := 14
	if opts.DB == db {
		db = 13
	}
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	pu.Path = "/" + strconv.Itoa(db)
	return pu.String()
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// opened fails t on an open error and closes the driver when t ends.
func opened[D interface{ Close() error }](t *testing.T) func(D, error) D {
	return func(d D, err error) D {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		return d
	}
}

// A message that does not decode as an envelope, written into a queue's
// stream by a foreign or broken producer, is dead-lettered by a worker
// with the reason and recorded as a failure of the task it names; the
// worker keeps working. (Redis only: no other backend can hold a message
// that is not an envelope.)
func TestSystemUndecodableMessageIsDeadLettered(t *testing.T) {
	u := testutil.NeedRedis(t)
	ctx := context.Background()
	ns := "t-undecodable-" + stem.NewTaskID()[:8]
	r := roles(t, u, ns)
	ropt, err := redis.ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(ropt)
	defer rdb.Close()
	prefix := "stem:{" + ns + ":default}:"
	// Make sure the stream and group exist before the foreign write.
	if _, err := r.Broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{stemtype.DefaultQueue}, Consumer: "probe",
		Max: 1, Lease: time.Second}); err != nil {
		t.Fatal(err)
	}
	bad := `{"id":"bad-1","task":"echo","attempt":"zero"}`
	if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: prefix + "stream", Values: []string{"msg", bad}}).Err(); err != nil {
		t.Fatal(err)
	}
	reg := stem.NewRegistry()
	stem.Register(reg, "echo", func(*stem.TaskContext, stem.Args) (any, error) { return "ok", nil }, stem.TaskOptions{})
	w, err := stem.NewWorker(stem.WorkerConfig{Namespace: ns, Registry: reg, Broker: r.Broker, Results: r.Results,
		Logger: quiet(), ClaimWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	systemtest.RunWorker(t, w)

	client, err := stem.NewClient(stem.ClientConfig{Broker: r.Broker, Results: r.Results})
	if err != nil {
		t.Fatal(err)
	}
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
	if err != nil || len(dead) != 1 || dead[0].Values["msg"] != bad {
		t.Fatalf("dead letters: %+v %v", dead, err)
	}
	if reason, _ := dead[0].Values["reason"].(string); !strings.Contains(reason, "undecodable") {
		t.Fatalf("dead letter reason %q, want it to say undecodable", reason)
	}
	// The worker keeps working.
	id, err := client.Enqueue(ctx, "echo", nil, stem.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := client.Wait(cctx, id); err != nil || r.State != stemtype.StateSucceeded {
		t.Fatalf("after the dead letter: %+v %v", r, err)
	}
}
