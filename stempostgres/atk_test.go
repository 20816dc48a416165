package stempostgres_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stempostgres"
	"github.com/stem-go/stem/stemtype"
)

// A libpq key=value connection string, or a URL without "//", is not the
// URL form stem takes: it is refused as a configuration error, before any
// connection, and the error never shows the password it holds.
func TestKeyValueConnStringIsRefusedWithoutThePassword(t *testing.T) {
	const pw = "s3cretPW"
	for _, u := range []string{
		"host=127.0.0.1 user=u password=" + pw + " dbname=test",
		"postgres:host=127.0.0.1 password=" + pw,
		"postgresql:user=u password=" + pw,
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		b, err := stempostgres.OpenBroker(ctx, u, stemdriver.Options{Logger: quiet()})
		cancel()
		if err == nil {
			b.Close()
			t.Errorf("%q opened; want a configuration error", strings.ReplaceAll(u, pw, "xxxxx"))
			continue
		}
		if !errors.Is(err, stemdriver.ErrBadConfig) {
			t.Errorf("%q: err = %v, want ErrBadConfig", strings.ReplaceAll(u, pw, "xxxxx"), strings.ReplaceAll(err.Error(), pw, "xxxxx"))
		}
		if strings.Contains(err.Error(), pw) {
			t.Errorf("%q: err shows the password: %q", strings.ReplaceAll(u, pw, "xxxxx"), strings.ReplaceAll(err.Error(), pw, "<PASSWORD>"))
		}
		if _, err := stempostgres.SchemaFromURL(u); err == nil || strings.Contains(err.Error(), pw) {
			t.Errorf("SchemaFromURL(%q) = %v; want an error without the password", strings.ReplaceAll(u, pw, "xxxxx"), err != nil)
		}
	}
}

// Schema names that need quoting work for every role: tasks, results,
// revokes, control messages (short and long), replies and presence.
func TestSchemaNamesNeedingQuotes(t *testing.T) {
	base := testutil.NeedPostgres(t)
	suffix := fmt.Sprintf("%x", time.Now().UnixNano())
	names := []string{
		"Tenant-A " + suffix,
		`q"uo'te.dot ` + suffix,
		// 63 bytes exactly, multi-byte runes included.
		func() string {
			s := "é_" + suffix + "_"
			for len(s)+2 <= 63 {
				s += "é"
			}
			for len(s) < 63 {
				s += "x"
			}
			return s
		}(),
	}
	for _, schema := range names {
		t.Run(schema, func(t *testing.T) {
			if len(schema) > 63 {
				t.Fatalf("schema name %d bytes", len(schema))
			}
			t.Cleanup(func() {
				conn := adminConn(t)
				if _, err := conn.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
					t.Errorf("drop schema: %v", err)
				}
			})
			pu, err := url.Parse(base)
			if err != nil {
				t.Fatal(err)
			}
			q := pu.Query()
			q.Set("search_path", schema)
			pu.RawQuery = q.Encode()
			u := pu.String()
			if got, err := stempostgres.SchemaFromURL(u); err != nil || got != schema {
				t.Fatalf("SchemaFromURL = %q, %v", got, err)
			}
			ctx := boundCtx(t)
			r := roles(t, u, "ns")
			sub, err := r.Control.Subscribe(ctx, "w1")
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			if err := r.Broker.Publish(ctx, envelope("t1", "q")); err != nil {
				t.Fatal(err)
			}
			ds, err := r.Broker.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "w1", Max: 1, Lease: time.Minute})
			if err != nil || len(ds) != 1 {
				t.Fatalf("claim: %d, %v", len(ds), err)
			}
			if err := r.Broker.Ack(ctx, ds...); err != nil {
				t.Fatal(err)
			}
			if err := r.Results.Put(ctx, &stemtype.TaskResult{ID: "t1", State: stemtype.StateSucceeded}); err != nil {
				t.Fatal(err)
			}
			if got, err := r.Results.Get(ctx, "t1"); err != nil || got.State != stemtype.StateSucceeded {
				t.Fatalf("Get = %+v, %v", got, err)
			}
			if _, err := r.Revokes.Upsert(ctx, stemtype.RevokeRecord{Namespace: "ns", TaskID: "t1", Version: 1}); err != nil {
				t.Fatal(err)
			}
			for _, m := range []string{"short", strings.Repeat("l", 9000)} {
				if err := r.Control.Publish(ctx, nil, []byte(m)); err != nil {
					t.Fatal(err)
				}
				select {
				case got := <-sub.C():
					if string(got) != m {
						t.Fatalf("control message %.20q, want %.20q", got, m)
					}
				case <-ctx.Done():
					t.Fatalf("control message of %d bytes never arrived", len(m))
				}
			}
			if err := r.Control.Reply(ctx, "req", []byte("reply")); err != nil {
				t.Fatal(err)
			}
			if err := r.Control.Replies(ctx, "req", func([]byte) bool { return false }); err != nil {
				t.Fatal(err)
			}
			if err := r.Control.Announce(ctx, stemtype.WorkerInfo{ID: "w1", Instance: "i"}, time.Minute); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Ack and Release of several deliveries act on the held ones (stemdriver
// contract), also when a stale delivery of the same message (its lease
// expired and the message was claimed again) comes in the same call.
func TestAckWithStaleDeliveryOfSameMessage(t *testing.T) {
	for _, op := range []string{"Ack", "Release"} {
		t.Run(op, func(t *testing.T) {
			u := testutil.PostgresSchema(t)
			ctx := boundCtx(t)
			b := opened[*stempostgres.Broker](t)(stempostgres.OpenBroker(ctx, u, stemdriver.Options{Namespace: "stale", Logger: quiet()}))
			if err := b.Publish(ctx, envelope("t1", "q")); err != nil {
				t.Fatal(err)
			}
			stale, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "w", Max: 1, Lease: time.Millisecond})
			if err != nil || len(stale) != 1 {
				t.Fatalf("first claim: %d, %v", len(stale), err)
			}
			// Claim waits for the lease's end.
			current, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "w", Max: 1, Lease: time.Hour, Wait: bound})
			if err != nil || len(current) != 1 || !current[0].Redelivered {
				t.Fatalf("second claim: %+v, %v", current, err)
			}
			var call error
			switch op {
			case "Ack":
				call = b.Ack(ctx, stale[0], current[0])
			case "Release":
				call = b.Release(ctx, stale[0], current[0])
			}
			if !errors.Is(call, stemdriver.ErrLeaseLost) {
				t.Errorf("%s(stale, current) = %v, want ErrLeaseLost for the stale one", op, call)
			}
			conn := adminConn(t)
			var rows, held int
			if err := conn.QueryRow(ctx, "SELECT count(*), count(*) FILTER (WHERE leased) FROM "+table(t, u, "stem_tasks")).Scan(&rows, &held); err != nil {
				t.Fatal(err)
			}
			switch {
			case op == "Ack" && rows != 0:
				t.Errorf("after Ack(stale, current): %d rows left, want the held delivery acked", rows)
			case op == "Release" && (rows != 1 || held != 0):
				t.Errorf("after Release(stale, current): %d rows, %d leased; want the held delivery released", rows, held)
			}
		})
	}
}

// A URL listing several hosts falls back to each in turn: a remote one
// reachable without TLS deserves the plaintext warning even when the
// first host is loopback.
func TestPlaintextWarningForFallbackHost(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Port 1 refuses at once; 192.0.2.1 (TEST-NET-1) never answers.
	if b, err := stempostgres.OpenBroker(ctx, "postgres://u:pw@127.0.0.1:1,192.0.2.1:5432/db?connect_timeout=1", stemdriver.Options{Logger: log}); err == nil {
		b.Close()
	}
	if logs := buf.String(); !strings.Contains(logs, "plaintext") {
		t.Errorf("logs %q, want a plaintext warning for the fallback host", logs)
	}
}

// Revoke upserts of one task from two pools (two processes) are causally
// ordered: every upsert gets a version of its own, higher than any stored
// before it, and the stored record is the one with the highest version.
func TestRevokeVersionsAcrossPools(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	opts := stemdriver.Options{Namespace: "rv", Logger: quiet()}
	stores := []*stempostgres.Revokes{
		opened[*stempostgres.Revokes](t)(stempostgres.OpenRevokes(ctx, u+"&application_name=stem_a", opts)),
		opened[*stempostgres.Revokes](t)(stempostgres.OpenRevokes(ctx, u+"&application_name=stem_b", opts)),
	}
	const writers, each = 4, 25
	var mu sync.Mutex
	seen := map[int64]string{}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				who := fmt.Sprintf("w%d-%d", w, i)
				// The proposed version lags far behind: only the stored
				// one orders the writes.
				out, err := stores[w%2].Upsert(ctx, stemtype.RevokeRecord{Namespace: "rv", TaskID: "t", Version: 1, Reason: who})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if prev, dup := seen[out[0].Version]; dup {
					t.Errorf("version %d given to %s and %s", out[0].Version, prev, who)
				}
				seen[out[0].Version] = who
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	var top int64
	for v := range seen {
		top = max(top, v)
	}
	recs, err := stores[0].List(ctx, "rv")
	if err != nil || len(recs) != 1 {
		t.Fatalf("List = %+v, %v", recs, err)
	}
	if recs[0].Version != top || recs[0].Reason != seen[top] {
		t.Errorf("stored %d (%s), want the highest assigned, %d (%s)", recs[0].Version, recs[0].Reason, top, seen[top])
	}
	if len(seen) != writers*each {
		t.Errorf("%d versions for %d upserts", len(seen), writers*each)
	}
}

// ExtendLease with a lease that is not positive is refused, as Claim
// refuses one: it must not hand the message to another consumer while
// the holder is told its lease was extended.
func TestExtendLeaseNonPositiveIsRefused(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	b := opened[*stempostgres.Broker](t)(stempostgres.OpenBroker(ctx, u, stemdriver.Options{Namespace: "ext", Logger: quiet()}))
	if err := b.Publish(ctx, envelope("t1", "q")); err != nil {
		t.Fatal(err)
	}
	ds, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "w", Max: 1, Lease: time.Hour})
	if err != nil || len(ds) != 1 {
		t.Fatalf("claim: %d, %v", len(ds), err)
	}
	for _, lease := range []time.Duration{0, -time.Minute} {
		err := b.ExtendLease(ctx, ds[0], lease)
		if err == nil {
			t.Errorf("ExtendLease(%v) = nil, want an error", lease)
		}
		other, err := b.Claim(ctx, stemdriver.ClaimRequest{Queues: []string{"q"}, Consumer: "w2", Max: 1, Lease: time.Hour})
		if err != nil || len(other) != 0 {
			t.Fatalf("after ExtendLease(%v), another consumer claimed %d (%v): the lease was cut short", lease, len(other), err)
		}
	}
}

// Control messages and replies are opaque bytes, the empty (nil) message
// included: it is delivered as an empty message, not refused.
func TestEmptyControlMessageAndReply(t *testing.T) {
	u := testutil.PostgresSchema(t)
	ctx := boundCtx(t)
	c := opened[*stempostgres.Control](t)(stempostgres.OpenControl(ctx, u, stemdriver.Options{Namespace: "e", Logger: quiet()}))
	sub, err := c.Subscribe(ctx, "w")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	// Targets long enough to send the message through the table.
	long := strings.Repeat("w", 8000)
	for _, targets := range [][]string{nil, {"w", long}} {
		if err := c.Publish(ctx, targets, nil); err != nil {
			t.Fatalf("Publish of a nil message to %d targets: %v", len(targets), err)
		}
		select {
		case m := <-sub.C():
			if len(m) != 0 {
				t.Fatalf("got %q, want an empty message", m)
			}
		case <-ctx.Done():
			t.Fatal("the empty message never arrived")
		}
	}
	if err := c.Reply(ctx, "r", nil); err != nil {
		t.Fatalf("Reply of a nil message: %v", err)
	}
	n := -1
	if err := c.Replies(ctx, "r", func(m []byte) bool { n = len(m); return false }); err != nil || n != 0 {
		t.Fatalf("Replies = %v, message of %d bytes; want one empty reply", err, n)
	}
}
