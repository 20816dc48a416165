package systemtest

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// A broadcast command reaches each of three workers, and each answers.
func testBroadcastReachesEveryWorker(t *testing.T, h Harness) {
	d := open(t, h)
	ids := []string{"w1", "w2", "w3"}
	for _, id := range ids {
		d.startWorker(stem.WorkerConfig{ID: id})
	}
	ctx := context.Background()
	r, err := d.ctl.Ping(ctx, target())
	if err != nil {
		t.Fatal(err)
	}
	if got := replyIDs(r); !slices.Equal(got, ids) || len(r.Missing) != 0 || !slices.Equal(r.Live, ids) {
		t.Fatalf("broadcast ping: replies from %v, missing %v, live %v; want each of %v", got, r.Missing, r.Live, ids)
	}
	for _, rep := range stem.Decode[stemtype.PingReply](r) {
		if rep.Err != nil {
			t.Fatalf("worker %s: error reply: %v", rep.WorkerID, rep.Err)
		}
	}
	s, err := d.ctl.Stats(ctx, target())
	if err != nil {
		t.Fatal(err)
	}
	if got := replyIDs(s); !slices.Equal(got, ids) {
		t.Fatalf("broadcast stats: replies from %v, want %v", got, ids)
	}
	for _, rep := range s.Replies {
		var st stemtype.StatsReply
		if err := json.Unmarshal(rep.Payload, &st); err != nil || st.Namespace != d.ns {
			t.Fatalf("stats of %s: %+v %v", rep.WorkerID, st, err)
		}
	}
}

// A command addressed to one worker of three is answered by that worker
// alone; a named worker that is not live is reported missing at once.
func testTargetedCommand(t *testing.T, h Harness) {
	d := open(t, h)
	for _, id := range []string{"w1", "w2", "w3"} {
		d.startWorker(stem.WorkerConfig{ID: id})
	}
	ctx := context.Background()
	r, err := d.ctl.Ping(ctx, target("w2"))
	if err != nil {
		t.Fatal(err)
	}
	if got := replyIDs(r); !slices.Equal(got, []string{"w2"}) || len(r.Missing) != 0 {
		t.Fatalf("ping to w2: replies from %v, missing %v", got, r.Missing)
	}
	i, err := d.ctl.Inspect(ctx, target("w3"), stemtype.InspectRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := replyIDs(i); !slices.Equal(got, []string{"w3"}) || i.Replies[0].Status != stemtype.ReplyOK {
		t.Fatalf("inspect of w3: replies %+v", i.Replies)
	}
	g, err := d.ctl.Ping(ctx, target("w1", "ghost"))
	if err != nil {
		t.Fatal(err)
	}
	if got := replyIDs(g); !slices.Equal(got, []string{"w1"}) || !slices.Equal(g.Missing, []string{"ghost"}) ||
		!slices.Equal(g.NotLive, []string{"ghost"}) {
		t.Fatalf("ping to w1 and ghost: replies from %v, missing %v, not live %v", got, g.Missing, g.NotLive)
	}
}

// silentWorker subscribes and announces a worker id on the control
// transport that never answers a command, as a hung worker would.
func (d *deployment) silentWorker(id string) {
	d.t.Helper()
	ctx := context.Background()
	sub, err := d.roles.Control.Subscribe(ctx, id)
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { _ = sub.Close() })
	if err := d.roles.Control.Announce(ctx, stemtype.WorkerInfo{ID: id, Namespace: d.ns, Instance: "silent-" + id},
		time.Hour); err != nil {
		d.t.Fatal(err)
	}
}

// A broadcast lists a live worker that does not answer as missing, once
// its timeout is over, and the answers of the others as replies.
func testBroadcastListsSilentLiveWorkerAsMissing(t *testing.T, h Harness) {
	d := open(t, h)
	d.startWorker(stem.WorkerConfig{ID: "w1"})
	d.silentWorker("silent")
	r := pingUntilReplied(t, d.ctl, "w1", stem.Target{})
	if got := replyIDs(r); !slices.Equal(got, []string{"w1"}) {
		t.Errorf("replies from %v, want [w1]", got)
	}
	if !slices.Equal(r.Missing, []string{"silent"}) || len(r.NotLive) != 0 || !slices.Equal(r.Live, []string{"silent", "w1"}) {
		t.Errorf("missing %v, not live %v, live %v; want missing [silent], none not live, live [silent w1]",
			r.Missing, r.NotLive, r.Live)
	}
}

// A command to workers that are not live does not wait for them: with
// nothing live to wait for it returns at once, long before its timeout of
// an hour (the suite's bound on the call is the failure detector).
func testCommandToWorkerNotLiveFailsFast(t *testing.T, h Harness) {
	d := open(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	hour := time.Hour

	// No worker at all: a broadcast and a targeted command return at once.
	r, err := d.ctl.Ping(ctx, stem.Target{Timeout: hour})
	if err != nil {
		t.Fatalf("broadcast with no live worker: %v", err)
	}
	if len(r.Replies) != 0 || len(r.Missing) != 0 || r.Live == nil || len(r.Live) != 0 || r.PresenceErr != nil {
		t.Errorf("broadcast with no live worker: %+v", r)
	}
	r, err = d.ctl.Ping(ctx, stem.Target{Workers: []string{"ghost"}, Timeout: hour})
	if err != nil {
		t.Fatalf("ping of a ghost: %v", err)
	}
	if !slices.Equal(r.Missing, []string{"ghost"}) || !slices.Equal(r.NotLive, []string{"ghost"}) {
		t.Errorf("ping of a ghost: missing %v, not live %v", r.Missing, r.NotLive)
	}

	// A live worker and a ghost: only the live one is waited for.
	d.startWorker(stem.WorkerConfig{ID: "w1"})
	r, err = d.ctl.Ping(ctx, stem.Target{Workers: []string{"ghost", "w1"}, Timeout: hour})
	if err != nil {
		t.Fatalf("ping of w1 and a ghost: %v", err)
	}
	if got := replyIDs(r); !slices.Equal(got, []string{"w1"}) || !slices.Equal(r.Missing, []string{"ghost"}) ||
		!slices.Equal(r.NotLive, []string{"ghost"}) {
		t.Errorf("ping of w1 and a ghost: replies %v, missing %v, not live %v", got, r.Missing, r.NotLive)
	}
}

// A control message that does not decode is answered with an error reply
// when it names a request id (and only logged when it does not), and the
// worker keeps working and answering.
func testMalformedControlMessageAnsweredWorkerKeepsWorking(t *testing.T, h Harness) {
	d := open(t, h)
	stem.Register(d.reg, "echo", func(*stem.TaskContext, stem.Args) (any, error) { return 1, nil }, stem.TaskOptions{})
	d.startWorker(stem.WorkerConfig{ID: "w1"})
	ctx := context.Background()
	bad := []byte(`{"requestId":"r-bad","type":"inspect","payload":{"includeRevoked":"yes"}}`)
	if err := d.roles.Control.Publish(ctx, nil, bad); err != nil {
		t.Fatal(err)
	}
	// Garbage that names no request id is only logged.
	if err := d.roles.Control.Publish(ctx, nil, []byte("\x00not json")); err != nil {
		t.Fatal(err)
	}
	var reply stemtype.ControlReply
	cctx, cancel := context.WithTimeout(ctx, waitBound)
	defer cancel()
	if err := d.roles.Control.Replies(cctx, "r-bad", func(b []byte) bool { return json.Unmarshal(b, &reply) != nil }); err != nil {
		t.Fatalf("no reply to the malformed command: %v", err)
	}
	if reply.Status != stemtype.ReplyError || reply.Error == nil || reply.WorkerID != "w1" {
		t.Fatalf("reply %+v", reply)
	}
	if res := d.wait(d.enqueue("echo", stem.EnqueueOptions{})); res.State != stemtype.StateSucceeded {
		t.Fatalf("worker stopped working: %+v", res)
	}
	if r, err := d.ctl.Ping(ctx, target("w1")); err != nil || len(r.Replies) != 1 {
		t.Fatalf("ping after malformed: %+v %v", r, err)
	}
}

// A worker's stats count what it did: processed, succeeded, failed and
// retried tasks, with its concurrency, namespace and queues.
func testStatsCountersAfterKnownWorkload(t *testing.T, h Harness) {
	d := open(t, h)
	stem.Register(d.reg, "ok", func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }, stem.TaskOptions{})
	stem.Register(d.reg, "bad", func(*stem.TaskContext, stem.Args) (any, error) { return nil, errors.New("x") }, stem.TaskOptions{MaxRetries: 1, RetryPolicy: stem.ExponentialBackoff{Base: time.Millisecond}})
	d.startWorker(stem.WorkerConfig{ID: "w1", Concurrency: 3})
	var ids []string
	for range 3 {
		ids = append(ids, d.enqueue("ok", stem.EnqueueOptions{}))
	}
	ids = append(ids, d.enqueue("bad", stem.EnqueueOptions{}))
	for _, id := range ids {
		d.wait(id)
	}
	r, err := d.ctl.Stats(context.Background(), target("w1"))
	if err != nil || len(r.Replies) != 1 {
		t.Fatalf("%+v %v", r, err)
	}
	var s stemtype.StatsReply
	if err := json.Unmarshal(r.Replies[0].Payload, &s); err != nil {
		t.Fatal(err)
	}
	if s.Processed != 4 || s.Succeeded != 3 || s.Failed != 1 || s.Retried != 1 || s.Cancelled != 0 ||
		s.Concurrency != 3 || s.Namespace != d.ns || s.Queues[stemtype.DefaultQueue] != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// inspectOf decodes the one ok reply of r, with the names of its payload's
// fields.
func inspectOf(t *testing.T, r *stem.Replies) (stemtype.InspectReply, []string) {
	t.Helper()
	if len(r.Replies) != 1 || r.Replies[0].Status != stemtype.ReplyOK {
		t.Fatalf("want one ok reply, got %+v", r)
	}
	var p stemtype.InspectReply
	if err := json.Unmarshal(r.Replies[0].Payload, &p); err != nil {
		t.Fatal(err)
	}
	var keys map[string]json.RawMessage
	_ = json.Unmarshal(r.Replies[0].Payload, &keys)
	var names []string
	for k := range keys {
		names = append(names, k)
	}
	slices.Sort(names)
	return p, names
}

// Inspect carries the revoke set only when asked, and then at most Limit
// records, the newest first, with the total always visible; a negative
// limit is refused.
func testInspectRevokedOnlyWhenAskedAndLimited(t *testing.T, h Harness) {
	d := open(t, h)
	d.startWorker(stem.WorkerConfig{ID: "w1"})
	ctx := context.Background()
	for _, id := range []string{"r1", "r2", "r3", "r4", "r5"} { // one call each: increasing versions
		if _, err := d.ctl.Revoke(ctx, target("w1"), stem.RevokeOptions{TaskIDs: []string{id}}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := d.ctl.Inspect(ctx, target("w1"), stemtype.InspectRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if p, keys := inspectOf(t, r); slices.Contains(keys, "revoked") || p.RevokedTotal != 5 {
		t.Errorf("inspect not asking for revokes: keys %v, total %d", keys, p.RevokedTotal)
	}
	r, err = d.ctl.Inspect(ctx, target("w1"), stemtype.InspectRequest{IncludeRevoked: true, Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	p, _ := inspectOf(t, r)
	var got []string
	for _, rec := range p.Revoked {
		got = append(got, rec.TaskID)
	}
	if !slices.Equal(got, []string{"r5", "r4"}) || p.RevokedTotal != 5 {
		t.Errorf("inspect with limit 2: revoked %v of %d, want [r5 r4] of 5", got, p.RevokedTotal)
	}
	r, err = d.ctl.Inspect(ctx, target("w1"), stemtype.InspectRequest{IncludeRevoked: true})
	if err != nil {
		t.Fatal(err)
	}
	if p, _ = inspectOf(t, r); len(p.Revoked) != 5 || p.RevokedTotal != 5 {
		t.Errorf("inspect with every revoke: %d of %d", len(p.Revoked), p.RevokedTotal)
	}
	if _, err := d.ctl.Inspect(ctx, target("w1"), stemtype.InspectRequest{Limit: -1}); err == nil {
		t.Error("InspectWith accepted a negative limit")
	}
}

// pingUntilReplied pings target, whose timeout it sets, until worker has
// replied, and returns that ping's replies. A ping that waits out its
// timeout (one that waits for a worker that never answers, or one sent
// without presence) must get the reply within it, and a loaded machine
// may need more than the first: the timeout doubles, from 200 ms, up to
// a ping of about 13 s, whose replies are returned whatever they are.
func pingUntilReplied(t *testing.T, c *stem.Controller, worker string, target stem.Target) *stem.Replies {
	t.Helper()
	for target.Timeout = 200 * time.Millisecond; ; target.Timeout *= 2 {
		r, err := c.Ping(context.Background(), target)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(replyIDs(r), worker) || target.Timeout > 10*time.Second {
			return r
		}
	}
}

// failingPresence is a control transport whose Workers always fails.
type failingPresence struct{ stemdriver.ControlTransport }

func (failingPresence) Workers(context.Context) ([]stemtype.WorkerInfo, error) {
	return nil, errors.New("presence unreadable")
}

// A controller that cannot read presence waits for replies until the
// target's timeout, as it did before presence, reports the failure in
// PresenceErr and says so in its log.
func testCommandWithoutPresenceFallsBackAndLogs(t *testing.T, h Harness) {
	d := open(t, h)
	d.startWorker(stem.WorkerConfig{ID: "w1"})
	var log testutil.SyncBuffer
	c, err := stem.NewController(stem.ControllerConfig{Namespace: d.ns, Control: failingPresence{d.roles.Control},
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ping := func(workers ...string) *stem.Replies {
		t.Helper()
		r := pingUntilReplied(t, c, "w1", stem.Target{Workers: workers})
		if r.PresenceErr == nil || r.Live != nil || len(r.NotLive) != 0 {
			t.Errorf("ping %v without presence: %+v", workers, r)
		}
		return r
	}
	if r := ping(); !slices.Equal(replyIDs(r), []string{"w1"}) || len(r.Missing) != 0 {
		t.Errorf("broadcast without presence: %+v", r)
	}
	if r := ping("w1", "ghost"); !slices.Equal(replyIDs(r), []string{"w1"}) || !slices.Equal(r.Missing, []string{"ghost"}) {
		t.Errorf("targeted ping without presence: %+v", r)
	}
	if !strings.Contains(log.String(), "presence unreadable") {
		t.Errorf("no log line about the presence failure:\n%s", log.String())
	}
}

// faultyResults fails the operations named in fail.
type faultyResults struct {
	stemdriver.ResultBackend
	fail map[string]bool
}

func (f faultyResults) GetMany(ctx context.Context, ids ...string) ([]*stemtype.TaskResult, error) {
	if f.fail["GetMany"] {
		return nil, errors.New("GetMany broke")
	}
	return f.ResultBackend.GetMany(ctx, ids...)
}

func (f faultyResults) Put(ctx context.Context, rs ...*stemtype.TaskResult) error {
	if f.fail["Put"] {
		return errors.New("Put broke")
	}
	return f.ResultBackend.Put(ctx, rs...)
}

// conditionalFaultyResults adds a PutIfState that fails when asked to;
// the backend it wraps must be a stemdriver.ConditionalPutter.
type conditionalFaultyResults struct{ faultyResults }

func (f conditionalFaultyResults) PutIfState(ctx context.Context, r *stemtype.TaskResult, states ...stemtype.State) (bool, error) {
	if f.fail["PutIfState"] {
		return false, errors.New("PutIfState broke")
	}
	return f.ResultBackend.(stemdriver.ConditionalPutter).PutIfState(ctx, r, states...)
}

// A revoke whose tasks cannot be marked cancelled is still stored and
// published, and the failure is reported, not dropped.
func testRevokeReportsMarkCancelledErrors(t *testing.T, h Harness) {
	for _, tc := range []struct {
		name        string
		results     func(stemdriver.ResultBackend) stemdriver.ResultBackend
		conditional bool // the case wraps the backend's PutIfState
		say         string
		checked     bool
	}{
		{"GetMany", func(r stemdriver.ResultBackend) stemdriver.ResultBackend {
			return conditionalFaultyResults{faultyResults{r, map[string]bool{"GetMany": true}}}
		}, true, "GetMany broke", false},
		{"PutIfState", func(r stemdriver.ResultBackend) stemdriver.ResultBackend {
			return conditionalFaultyResults{faultyResults{r, map[string]bool{"PutIfState": true}}}
		}, true, "PutIfState broke", true},
		{"Put", func(r stemdriver.ResultBackend) stemdriver.ResultBackend {
			return faultyResults{r, map[string]bool{"Put": true}}
		}, false, "Put broke", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := open(t, h)
			if _, ok := d.roles.Results.(stemdriver.ConditionalPutter); tc.conditional && !ok {
				t.Skip("the backend's result backend has no PutIfState")
			}
			stem.Register(d.reg, "later", func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }, stem.TaskOptions{})
			id := d.enqueue("later", stem.EnqueueOptions{})
			var log testutil.SyncBuffer
			c, err := stem.NewController(stem.ControllerConfig{Namespace: d.ns, Control: d.roles.Control, Revokes: d.roles.Revokes,
				Results: tc.results(d.roles.Results), Logger: slog.New(slog.NewTextHandler(&log, nil))})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			res, err := c.Revoke(ctx, target(), stem.RevokeOptions{TaskIDs: []string{id}})
			if err != nil {
				t.Fatalf("the revoke failed: %v", err)
			}
			if res.MarkErr == nil || !strings.Contains(res.MarkErr.Error(), tc.say) || res.Checked != tc.checked || len(res.Records) != 1 {
				t.Errorf("mark error %v (want %q), checked %v (want %v), records %d", res.MarkErr, tc.say, res.Checked, tc.checked, len(res.Records))
			}
			if recs, err := d.roles.Revokes.List(ctx, d.ns); err != nil || len(recs) != 1 {
				t.Errorf("revoke not stored: %v %v", recs, err)
			}
			// Revoke, which returns no such result, logs it.
			if _, err := c.Revoke(ctx, target(), stem.RevokeOptions{TaskIDs: []string{id}}); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(log.String(), tc.say) {
				t.Errorf("Revoke did not log the failure:\n%s", log.String())
			}
		})
	}
}
