package stem_test

import (
	"context"
	"encoding/json"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemredis"
	"github.com/stem-go/stem/stemtype"
)

// Two deployments with the same namespace and worker id on two databases of
// one Redis server never cross: a revoke broadcast on one is not applied by
// the other's worker, and each broadcast ping is answered by its own worker
// only.
func TestRedisDatabasesDoNotCross(t *testing.T) {
	base := testutil.NeedRedis(t)
	ns := "t-dbs-" + stem.NewTaskID()[:8]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var controllers [2]*stem.Controller
	for i, db := range []int{11, 12} {
		pu, err := url.Parse(base)
		if err != nil {
			t.Fatal(err)
		}
		pu.Path = "/" + strconv.Itoa(db)
		u := pu.String()
		testutil.CleanupNamespace(t, u, ns)
		opts := stemdriver.Options{Namespace: ns, Logger: quiet()}
		br, err := stemredis.OpenBroker(ctx, u, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = br.Close() })
		res, err := stemredis.OpenResults(ctx, u, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = res.Close() })
		rev, err := stemredis.OpenRevokes(ctx, u, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = rev.Close() })
		ctl, err := stemredis.OpenControl(ctx, u, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ctl.Close() })
		w, err := stem.NewWorker(stem.WorkerConfig{ID: "w1", Namespace: ns, Registry: stem.NewRegistry(), Broker: br,
			Results: res, Revokes: rev, Control: ctl, Logger: quiet(), ClaimWait: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		wctx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(wctx) }()
		t.Cleanup(func() {
			stop()
			if err := <-done; err != nil {
				t.Errorf("worker on db %d: %v", db, err)
			}
		})
		select {
		case <-w.Ready():
		case err := <-done:
			t.Fatalf("worker on db %d: Run: %v", db, err)
		}
		controllers[i], err = stem.NewController(stem.ControllerConfig{Namespace: ns, Control: ctl, Revokes: rev, Results: res})
		if err != nil {
			t.Fatal(err)
		}
	}

	task := "t-" + stem.NewTaskID()
	if _, err := controllers[0].Revoke(ctx, stem.Target{Timeout: 5 * time.Second}, stem.RevokeOptions{TaskIDs: []string{task}}); err != nil {
		t.Fatal(err)
	}
	// The second database's worker handles its commands in order: a
	// revoke that reached it before this inspect shows in the reply.
	r, err := controllers[1].Inspect(ctx, stem.Target{Workers: []string{"w1"}, Timeout: 5 * time.Second}, stemtype.InspectRequest{IncludeRevoked: true})
	if err != nil || len(r.Replies) != 1 {
		t.Fatalf("inspect on db 12: %+v (%v)", r, err)
	}
	var ins stemtype.InspectReply
	if err := json.Unmarshal(r.Replies[0].Payload, &ins); err != nil {
		t.Fatal(err)
	}
	if len(ins.Revoked) != 0 {
		t.Fatalf("the worker on db 12 holds revokes published on db 11: %+v", ins.Revoked)
	}
	for i, c := range controllers {
		r, err := c.Ping(ctx, stem.Target{Timeout: 5 * time.Second})
		if err != nil || len(r.Replies) != 1 {
			t.Fatalf("broadcast ping on database %d: %+v (%v), want one reply", 11+i, r, err)
		}
	}
}
