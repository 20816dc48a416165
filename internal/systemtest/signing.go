package systemtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// The signing cases' keys: the deployment's, and one it does not hold.
const (
	signingKey      = "sys-signing-key-0123456789abcdefghijklmnop"
	otherSigningKey = "sys-other-key-ZYXWVUTSRQPONMLKJIHGFEDCBA98"
)

// signed is a deployment's signing side: its keys, and a client and a
// controller that sign with them (the deployment's own sign nothing).
type signed struct {
	keys   *stem.SigningKeys
	client *stem.Client
	ctl    *stem.Controller
}

func newSigned(t *testing.T, d *deployment, key string) *signed {
	t.Helper()
	k, err := stem.NewSigningKeys(key)
	if err != nil {
		t.Fatal(err)
	}
	s := &signed{keys: k}
	if s.client, err = stem.NewClient(stem.ClientConfig{Broker: d.roles.Broker, Results: d.roles.Results, Registry: d.reg,
		Logger: quiet(), SigningKeys: k}); err != nil {
		t.Fatal(err)
	}
	if s.ctl, err = stem.NewController(stem.ControllerConfig{Namespace: d.ns, Control: d.roles.Control, Revokes: d.roles.Revokes,
		Results: d.roles.Results, Logger: quiet(), SigningKeys: k}); err != nil {
		t.Fatal(err)
	}
	return s
}

// rejected returns the worker's SignatureRejected counter, asked with a
// signed stats command.
func (s *signed) rejected(t *testing.T, workerID string) int64 {
	t.Helper()
	r, err := s.ctl.Stats(context.Background(), target(workerID))
	if err != nil {
		t.Fatal(err)
	}
	reps := stem.Decode[stemtype.StatsReply](r)
	if len(reps) != 1 || reps[0].Err != nil {
		t.Fatalf("signed stats of %s: %+v", workerID, r)
	}
	return reps[0].Payload.SignatureRejected
}

// waitRejected waits until the worker counts n refusals.
func (s *signed) waitRejected(d *deployment, workerID string, n int64) {
	d.t.Helper()
	d.waitFor(fmt.Sprintf("worker %s refused %d signature(s)", workerID, n), func(context.Context) bool {
		return s.rejected(d.t, workerID) >= n
	})
	if got := s.rejected(d.t, workerID); got != n {
		d.t.Fatalf("worker %s refused %d signatures, want %d", workerID, got, n)
	}
}

// A worker with signing keys runs the tasks they sign, retries included
// (it signs the retry), and dead-letters unsigned ones and ones signed
// with a key it does not hold: they never run, and their state stays as
// the producer recorded it.
func testSigningTasks(t *testing.T, h Harness) {
	d := open(t, h)
	s := newSigned(t, d, signingKey)
	ran := make(chan string, 8)
	stem.Register(d.reg, "sig.echo", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		ran <- tc.TaskID()
		return "ok", nil
	}, stem.TaskOptions{})
	stem.Register(d.reg, "sig.flaky", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		if tc.Attempt() == 0 {
			return nil, errors.New("not yet")
		}
		return "ok", nil
	}, stem.TaskOptions{MaxRetries: 3, RetryPolicy: stem.ExponentialBackoff{Base: time.Millisecond, Max: 5 * time.Millisecond}})
	d.startWorker(stem.WorkerConfig{ID: "w1", SigningKeys: s.keys})
	ctx := context.Background()

	good, err := s.client.Enqueue(ctx, "sig.echo", map[string]int{"n": 1}, stem.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res := d.wait(good); res.State != stemtype.StateSucceeded {
		t.Fatalf("signed task: %+v, want succeeded", res)
	}
	if got := await(t, ran, "the signed task runs"); got != good {
		t.Fatalf("ran %s, want %s", got, good)
	}
	flaky, err := s.client.Enqueue(ctx, "sig.flaky", nil, stem.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res := d.wait(flaky); res.State != stemtype.StateSucceeded || res.Attempt != 1 {
		t.Fatalf("signed task retried once: %+v, want succeeded at attempt 1 (the worker signs the retry)", res)
	}

	unsigned := d.enqueue("sig.echo", stem.EnqueueOptions{})
	s.waitRejected(d, "w1", 1)
	other := newSigned(t, d, otherSigningKey)
	foreign, err := other.client.Enqueue(ctx, "sig.echo", nil, stem.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.waitRejected(d, "w1", 2)
	d.waitDepth(stemtype.DefaultQueue, 0) // dead-lettered, not waiting
	noneOf(t, ran, "unsigned or foreign-signed tasks")
	for _, id := range []string{unsigned, foreign} {
		res, err := d.roles.Results.Get(ctx, id)
		if err != nil || res.State != stemtype.StatePending {
			t.Errorf("task %s after its dead letter: %+v %v, want pending as the producer recorded it (no result written)", id, res, err)
		}
	}
	// The worker keeps working.
	again, err := s.client.Enqueue(ctx, "sig.echo", nil, stem.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res := d.wait(again); res.State != stemtype.StateSucceeded {
		t.Fatalf("signed task after the dead letters: %+v", res)
	}
}

// listCounter is a revoke store that counts the listings that start, so
// that a case knows when the worker's re-sync has read (and acted on) what
// it wrote.
type listCounter struct {
	stemdriver.RevokeStore
	lists atomic.Int64
}

func (l *listCounter) List(ctx context.Context, ns string) ([]stemtype.RevokeRecord, error) {
	l.lists.Add(1)
	return l.RevokeStore.List(ctx, ns)
}

func (l *listCounter) ListChanges(ctx context.Context, ns, cursor string) ([]stemtype.RevokeRecord, string, error) {
	l.lists.Add(1)
	if cl, ok := l.RevokeStore.(stemdriver.RevokeChangeLister); ok {
		return cl.ListChanges(ctx, ns, cursor)
	}
	recs, err := l.RevokeStore.List(ctx, ns)
	return recs, "", err
}

// waitResynced waits until a re-sync that started after now's listing
// count (n) has ended: the listing n+2 starts once the re-sync of listing
// n+1, which started after the caller's write, has been applied whole.
func (l *listCounter) waitResynced(d *deployment, n int64) {
	d.t.Helper()
	d.waitFor("two revoke re-syncs", func(context.Context) bool { return l.lists.Load() >= n+2 })
}

// A worker with signing keys refuses an unsigned revoke --terminate with
// an error reply saying "signature invalid", and the unsigned record the
// controller stored never reaches the running task through the re-sync
// either; nor does one written straight into the store. A signed revoke
// terminates it.
func testSigningRevokes(t *testing.T, h Harness) {
	d := open(t, h)
	s := newSigned(t, d, signingKey)
	started := make(chan string, 2)
	ended := make(chan error, 2)
	stem.Register(d.reg, "sig.gated", func(tc *stem.TaskContext, _ stem.Args) (any, error) {
		started <- tc.TaskID()
		<-tc.Done()
		ended <- context.Cause(tc)
		return nil, tc.Err()
	}, stem.TaskOptions{})
	store := &listCounter{RevokeStore: d.roles.Revokes}
	d.startWorker(stem.WorkerConfig{ID: "w1", SigningKeys: s.keys, Revokes: store, RevokeSyncInterval: 20 * time.Millisecond})
	ctx := context.Background()
	id, err := s.client.Enqueue(ctx, "sig.gated", nil, stem.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	await(t, started, "the signed task starts")

	res, err := d.ctl.Revoke(ctx, target("w1"), stem.RevokeOptions{TaskIDs: []string{id}, Terminate: true, RequestedBy: "mallory"})
	if err != nil {
		t.Fatal(err)
	}
	if reps := res.Replies.Replies; len(reps) != 1 || reps[0].Status != stemtype.ReplyError || reps[0].Error == nil ||
		!strings.Contains(reps[0].Error.Message, "signature invalid") {
		t.Fatalf("unsigned revoke: replies %s, want one error reply saying signature invalid", mustJSONString(reps))
	}
	// The controller stored its unsigned record; a record written straight
	// into the store, signed with a key the worker does not hold, joins it.
	other := newSigned(t, d, otherSigningKey)
	now := time.Now().UTC()
	forged := stemtype.RevokeRecord{Namespace: d.ns, TaskID: stemtype.NameRevokeKey("sig.gated"), Kind: stemtype.RevokeKindName,
		Name: "sig.gated", Version: now.UnixMicro(), IssuedAt: now, Terminate: true, ExpiresAt: now.Add(time.Hour)}
	other.keys.SignRevoke(&forged)
	n := store.lists.Load()
	if _, err := d.roles.Revokes.Upsert(ctx, forged); err != nil {
		t.Fatal(err)
	}
	store.waitResynced(d, n)
	select {
	case cause := <-ended:
		t.Fatalf("the task ended (%v) after unsigned revokes", cause)
	default:
	}
	// The refused command, and each record read from the store once.
	s.waitRejected(d, "w1", 3)
	ins, err := s.ctl.Inspect(ctx, target("w1"), stemtype.InspectRequest{IncludeRevoked: true})
	if err != nil {
		t.Fatal(err)
	}
	irs := stem.Decode[stemtype.InspectReply](ins)
	if len(irs) != 1 || irs[0].Err != nil || irs[0].Payload.Inflight != 1 || irs[0].Payload.Active[0].Terminating ||
		irs[0].Payload.RevokedTotal != 0 {
		t.Fatalf("inspect after unsigned revokes: %s, want the task running, not terminating, and no revoke held", mustJSONString(irs))
	}

	sres, err := s.ctl.Revoke(ctx, target("w1"), stem.RevokeOptions{TaskIDs: []string{id}, Terminate: true, Reason: "signed", RequestedBy: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	rrs := stem.Decode[stemtype.RevokeReply](sres.Replies)
	// (The fast re-sync may signal the task first, from the store: the
	// reply then lists it applied, not in flight.)
	if len(rrs) != 1 || rrs[0].Err != nil || !slices.Equal(rrs[0].Payload.Tasks, []string{id}) || len(rrs[0].Payload.Rejected) != 0 {
		t.Fatalf("signed revoke: %s, want the record applied", mustJSONString(rrs))
	}
	if cause := await(t, ended, "the task sees the signed terminate"); !errors.Is(cause, stem.ErrTaskRevoked) {
		t.Fatalf("cause %v, want ErrTaskRevoked", cause)
	}
	checkRevokeMeta(t, d.wait(id), "signed", "ops")
	// The store keeps the signature: the record verifies as read back,
	// as a re-sync (or a worker that starts later) reads it.
	recs, err := d.roles.Revokes.List(ctx, d.ns)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(recs, func(r stemtype.RevokeRecord) bool { return r.TaskID == id && r.Reason == "signed" })
	if i < 0 {
		t.Fatalf("the signed revoke of %s is not in the store: %s", id, mustJSONString(recs))
	}
	if err := s.keys.VerifyRevoke(&recs[i]); err != nil {
		t.Fatalf("the signed record as the store returns it: %v (%s)", err, mustJSONString(recs[i]))
	}
	// A worker that starts now loads the signed record (which replaced
	// the unsigned one of the same task in the store), not the foreign
	// one.
	d.startWorker(stem.WorkerConfig{ID: "w2", SigningKeys: s.keys})
	ins, err = s.ctl.Inspect(ctx, target("w2"), stemtype.InspectRequest{IncludeRevoked: true})
	if err != nil {
		t.Fatal(err)
	}
	irs = stem.Decode[stemtype.InspectReply](ins)
	if len(irs) != 1 || irs[0].Err != nil || len(irs[0].Payload.Revoked) != 1 || irs[0].Payload.Revoked[0].TaskID != id {
		t.Fatalf("inspect of a worker started after the revokes: %s, want the signed revoke of %s alone", mustJSONString(irs), id)
	}
	if n := s.rejected(t, "w2"); n != 1 {
		t.Fatalf("worker w2 refused %d records at start, want 1 (the foreign one)", n)
	}
}

// A worker with signing keys answers a signed command once: the same
// message published again (a replay) gets no second answer and does
// nothing, and a signed command issued outside the window is refused with
// an error reply.
func testSigningReplay(t *testing.T, h Harness) {
	d := open(t, h)
	s := newSigned(t, d, signingKey)
	d.startWorker(stem.WorkerConfig{ID: "w1", SigningKeys: s.keys})
	ctx := context.Background()
	command := func(id string, at time.Time) []byte {
		c := stemtype.ControlCommand{RequestID: id, Type: stemtype.CommandPing, Targets: []string{"w1"},
			TimeoutMs: 5000, Version: stemtype.ControlVersion, IssuedAt: at}
		s.keys.SignCommand(&c, d.ns)
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ping := command("r-ping", time.Now().UTC())
	stale := command("r-stale", time.Now().UTC().Add(-2*stem.CommandWindow))
	for _, msg := range [][]byte{ping, ping, stale} {
		if err := d.roles.Control.Publish(ctx, []string{"w1"}, msg); err != nil {
			t.Fatal(err)
		}
	}
	// The replay and the stale command are refused; the stats command
	// that counts them is answered after them.
	s.waitRejected(d, "w1", 2)
	replies := func(id string, want int) []stemtype.ControlReply {
		var out []stemtype.ControlReply
		cctx, cancel := context.WithTimeout(ctx, time.Second) // ends the listing of the replies stored
		defer cancel()
		_ = d.roles.Control.Replies(cctx, id, func(b []byte) bool {
			var r stemtype.ControlReply
			if json.Unmarshal(b, &r) == nil {
				out = append(out, r)
			}
			return len(out) <= want
		})
		return out
	}
	if got := replies("r-ping", 1); len(got) != 1 || got[0].Status != stemtype.ReplyOK {
		t.Errorf("replies to a ping published twice: %s, want one ok reply", mustJSONString(got))
	}
	if got := replies("r-stale", 1); len(got) != 1 || got[0].Status != stemtype.ReplyError || got[0].Error == nil ||
		!strings.Contains(got[0].Error.Message, "signature invalid") || !strings.Contains(got[0].Error.Message, "window") {
		t.Errorf("replies to a command issued %s ago: %s, want one error reply naming the window", 2*stem.CommandWindow, mustJSONString(got))
	}
}

func mustJSONString(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return err.Error()
	}
	return string(b)
}
