package stemredis

import (
	"context"
	"log/slog"
	"testing"

	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
)

// Garbage PUBLISHed on a namespace's command channel by another client
// (not JSON, truncated JSON, JSON of the wrong type, a megabyte of junk)
// is logged as a malformed control message, and the worker answers the
// next ping.
func TestRawGarbageOnControlChannel(t *testing.T) {
	t.Parallel()
	rdb := rawClient(t)
	ns := newNS(t)
	var logs testutil.SyncBuffer
	ctx := context.Background()
	u := testutil.RedisURL()
	opts := stemdriver.Options{Namespace: ns, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	open := func(d interface{ Close() error }, err error) {
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
	}
	b, err := OpenBroker(ctx, u, opts)
	open(b, err)
	res, err := OpenResults(ctx, u, opts)
	open(res, err)
	rev, err := OpenRevokes(ctx, u, opts)
	open(rev, err)
	c, err := OpenControl(ctx, u, opts)
	open(c, err)
	ch := broadcastChannel(ns, c.db)
	systemtest.CheckRawControlGarbage(t, ns, systemtest.Roles{Broker: b, Results: res, Revokes: rev, Control: c}, &logs,
		func(raw []byte) error { return rdb.Publish(ctx, ch, raw).Err() }, systemtest.ControlGarbage())
}
