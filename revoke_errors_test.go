package stem_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemtype"
)

// countingControl is the memory control transport, counting publishes and
// failing them when fail is set.
type countingControl struct {
	stemdriver.ControlTransport
	published atomic.Int32
	fail      bool
}

func (c *countingControl) Publish(ctx context.Context, targets []string, msg []byte) error {
	if c.fail {
		return errors.New("publish broke")
	}
	c.published.Add(1)
	return c.ControlTransport.Publish(ctx, targets, msg)
}

// brokenRevokes is the memory revoke store whose writes fail.
type brokenRevokes struct{ stemdriver.RevokeStore }

func (brokenRevokes) Upsert(context.Context, ...stemtype.RevokeRecord) ([]stemtype.RevokeRecord, error) {
	return nil, errors.New("upsert broke")
}

// TestRevokeErrors: a revoke that could not be stored publishes nothing
// and returns no result; one stored but not published returns the stored
// records with the error; an Inspect with a negative limit sends nothing.
func TestRevokeErrors(t *testing.T) {
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "t-revoke-errors"}
	ctx := context.Background()
	target := stem.Target{Timeout: time.Millisecond}
	revoke := stem.RevokeOptions{TaskIDs: []string{"a"}}

	control := &countingControl{ControlTransport: hub.Control(opts)}
	c, err := stem.NewController(stem.ControllerConfig{Namespace: opts.Namespace, Control: control, Revokes: brokenRevokes{hub.Revokes()}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Revoke(ctx, target, revoke)
	if res != nil || !errors.Is(err, stem.ErrStoreUnavailable) || control.published.Load() != 0 {
		t.Fatalf("store down: result %+v, err %v, %d published; want nil, ErrStoreUnavailable, none", res, err, control.published.Load())
	}
	if _, err := c.Inspect(ctx, target, stemtype.InspectRequest{IncludeRevoked: true, Limit: -1}); err == nil || control.published.Load() != 0 {
		t.Fatalf("negative limit: err %v, %d published; want an error and nothing sent", err, control.published.Load())
	}

	control.fail = true
	revokes := hub.Revokes()
	c, err = stem.NewController(stem.ControllerConfig{Namespace: opts.Namespace, Control: control, Revokes: revokes})
	if err != nil {
		t.Fatal(err)
	}
	res, err = c.Revoke(ctx, target, revoke)
	if !errors.Is(err, stem.ErrBrokerUnavailable) || res == nil || len(res.Records) != 1 || res.Records[0].TaskID != "a" || res.Replies != nil {
		t.Fatalf("broker down: result %+v, err %v; want the stored record, no replies, ErrBrokerUnavailable", res, err)
	}
	if recs, err := revokes.List(ctx, opts.Namespace); err != nil || len(recs) != 1 {
		t.Fatalf("the revoke was not stored: %v %v", recs, err)
	}
}

// Revokes by name live in a key space of their own: a task id that would
// fall into it (starting with stemtype.RevokeKeyPrefix) is refused by a
// revoke, which then stores and sends nothing, and by an enqueue; an empty
// name is refused too.
func TestRevokeKeySpaceIsReserved(t *testing.T) {
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "t-revoke-keys"}
	ctx := context.Background()
	control := &countingControl{ControlTransport: hub.Control(opts)}
	revokes := hub.Revokes()
	c, err := stem.NewController(stem.ControllerConfig{Namespace: opts.Namespace, Control: control, Revokes: revokes})
	if err != nil {
		t.Fatal(err)
	}
	forged := stemtype.NameRevokeKey("email.send")
	for _, o := range []stem.RevokeOptions{{TaskIDs: []string{forged}}, {TaskNames: []string{""}}, {}} {
		if res, err := c.Revoke(ctx, stem.Target{Timeout: time.Millisecond}, o); err == nil || res != nil {
			t.Fatalf("Revoke(%+v) = %+v, %v; want an error", o, res, err)
		}
	}
	if recs, err := revokes.List(ctx, opts.Namespace); err != nil || len(recs) != 0 || control.published.Load() != 0 {
		t.Fatalf("refused revokes stored %v (%v) and published %d", recs, err, control.published.Load())
	}
	client, err := stem.NewClient(stem.ClientConfig{Broker: hub.Broker(opts)})
	if err != nil {
		t.Fatal(err)
	}
	if id, err := client.Enqueue(ctx, "email.send", nil, stem.EnqueueOptions{ID: forged}); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Fatalf("Enqueue with id %q = %q, %v; want an error saying the prefix is reserved", forged, id, err)
	}
}

// recordingControl is the memory control transport, keeping every message
// published.
type recordingControl struct {
	stemdriver.ControlTransport
	msgs [][]byte
}

func (c *recordingControl) Publish(ctx context.Context, targets []string, msg []byte) error {
	c.msgs = append(c.msgs, msg)
	return c.ControlTransport.Publish(ctx, targets, msg)
}

// A revoke whose record the store ignores (a pruned record's tombstone is
// newer: this host's clock is behind the one that wrote it) is returned
// with Version 0 and not sent to the workers; the other records are.
func TestRevokeIgnoredByTombstoneIsNotSent(t *testing.T) {
	hub := stemmem.New()
	opts := stemdriver.Options{Namespace: "t-revoke-tombstone"}
	ctx := context.Background()
	revokes := hub.Revokes()
	now := time.Now()
	ahead := stemtype.RevokeRecord{Namespace: opts.Namespace, TaskID: "a", Version: now.Add(time.Hour).UnixMicro(),
		IssuedAt: now, ExpiresAt: now.Add(-time.Minute)}
	if _, err := revokes.Upsert(ctx, ahead); err != nil {
		t.Fatal(err)
	}
	if n, err := revokes.Prune(ctx, opts.Namespace, now); err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v", n, err)
	}
	control := &recordingControl{ControlTransport: hub.Control(opts)}
	c, err := stem.NewController(stem.ControllerConfig{Namespace: opts.Namespace, Control: control, Revokes: revokes})
	if err != nil {
		t.Fatal(err)
	}
	res, _ := c.Revoke(ctx, stem.Target{Timeout: time.Millisecond}, stem.RevokeOptions{TaskIDs: []string{"a", "b"}})
	if res == nil || len(res.Records) != 2 || res.Records[0].Version != 0 || res.Records[1].Version == 0 {
		t.Fatalf("result %+v; want a unstored (version 0) and b stored", res)
	}
	if len(control.msgs) != 1 {
		t.Fatalf("%d messages published, want 1", len(control.msgs))
	}
	if msg := string(control.msgs[0]); strings.Contains(msg, `"taskId":"a"`) || !strings.Contains(msg, `"taskId":"b"`) {
		t.Fatalf("published %s; want b's record only", msg)
	}
}
