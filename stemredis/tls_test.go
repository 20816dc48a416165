package stemredis

import (
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// TestRedissAllRoles starts a private TLS-only redis-server with a
// certificate signed by a CA made here, and runs every role over rediss://
// with that CA given by the tls_ca option.
func TestRedissAllRoles(t *testing.T) {
	dir := t.TempDir()
	caFile, certFile, keyFile := testutil.WriteTestPKI(t, dir)
	addr := testutil.StartTLSRedis(t, dir, caFile, certFile, keyFile)
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
