package stem_test

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

// deadline bounds a call that must return long before its own timeout: a
// call still waiting at the deadline has not failed fast.
const deadline = 30 * time.Second

// silentWorker subscribes and announces a worker id on the control
// transport that never answers a command, as a hung worker would.
func (e *env) silentWorker(id string) {
	e.t.Helper()
	ctx := context.Background()
	sub, err := e.control.Subscribe(ctx, id)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = sub.Close() })
	if err := e.control.Announce(ctx, stemtype.WorkerInfo{ID: id, Namespace: e.ns}, time.Hour); err != nil {
		e.t.Fatal(err)
	}
}

func replyIDs(r *stem.Replies) []string {
	var out []string
	for _, rep := range r.Replies {
		out = append(out, rep.WorkerID)
	}
	slices.Sort(out)
	return out
}

// A broadcast lists a live worker that does not answer as missing.
func TestBroadcastListsSilentLiveWorkerAsMissing(t *testing.T) {
	e := newEnv(t)
	e.startWorker(stem.WorkerConfig{ID: "w1"})
	e.silentWorker("silent")
	r, err := e.controller().Ping(context.Background(), stem.Target{Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if got := replyIDs(r); !slices.Equal(got, []string{"w1"}) {
		t.Errorf("replies from %v, want [w1]", got)
	}
	if !slices.Equal(r.Missing, []string{"silent"}) || len(r.NotLive) != 0 || !slices.Equal(r.Live, []string{"silent", "w1"}) {
		t.Errorf("missing %v, not live %v, live %v; want missing [silent], none not live, live [silent w1]", r.Missing, r.NotLive, r.Live)
	}
}

// A command to workers that are not live does not wait for them: with
// nothing live to wait for it returns at once, long before its timeout.
func TestCommandToWorkerNotLiveFailsFast(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	hour := time.Hour

	// No worker at all: a broadcast and a targeted command return at once.
	r, err := e.controller().Ping(ctx, stem.Target{Timeout: hour})
	if err != nil {
		t.Fatalf("broadcast with no live worker: %v", err)
	}
	if len(r.Replies) != 0 || len(r.Missing) != 0 || r.Live == nil || len(r.Live) != 0 || r.PresenceErr != nil {
		t.Errorf("broadcast with no live worker: %+v", r)
	}
	r, err = e.controller().Ping(ctx, stem.Target{Workers: []string{"ghost"}, Timeout: hour})
	if err != nil {
		t.Fatalf("ping of a ghost: %v", err)
	}
	if !slices.Equal(r.Missing, []string{"ghost"}) || !slices.Equal(r.NotLive, []string{"ghost"}) {
		t.Errorf("ping of a ghost: missing %v, not live %v", r.Missing, r.NotLive)
	}

	// A live worker and a ghost: only the live one is waited for.
	e.startWorker(stem.WorkerConfig{ID: "w1"})
	r, err = e.controller().Ping(ctx, stem.Target{Workers: []string{"ghost", "w1"}, Timeout: hour})
	if err != nil {
		t.Fatalf("ping of w1 and a ghost: %v", err)
	}
	if got := replyIDs(r); !slices.Equal(got, []string{"w1"}) || !slices.Equal(r.Missing, []string{"ghost"}) ||
		!slices.Equal(r.NotLive, []string{"ghost"}) {
		t.Errorf("ping of w1 and a ghost: replies %v, missing %v, not live %v", got, r.Missing, r.NotLive)
	}
}

// failingPresence is a control transport whose Workers always fails.
type failingPresence struct{ stemdriver.ControlTransport }

func (failingPresence) Workers(context.Context) ([]stemtype.WorkerInfo, error) {
	return nil, errors.New("presence unreadable")
}

// Without presence, Send waits as it always did, and says so in its log.
func TestSendWithoutPresenceFallsBackAndLogs(t *testing.T) {
	e := newEnv(t)
	e.startWorker(stem.WorkerConfig{ID: "w1"})
	var log testutil.SyncBuffer
	c, err := stem.NewController(stem.ControllerConfig{Namespace: e.ns, Control: failingPresence{e.control},
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Ping(context.Background(), stem.Target{Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if got := replyIDs(r); !slices.Equal(got, []string{"w1"}) || len(r.Missing) != 0 || r.PresenceErr == nil || r.Live != nil {
		t.Errorf("broadcast without presence: %+v", r)
	}
	r, err = c.Ping(context.Background(), stem.Target{Workers: []string{"w1", "ghost"}, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if got := replyIDs(r); !slices.Equal(got, []string{"w1"}) || !slices.Equal(r.Missing, []string{"ghost"}) || len(r.NotLive) != 0 {
		t.Errorf("targeted ping without presence: %+v", r)
	}
	if !strings.Contains(log.String(), "presence unreadable") {
		t.Errorf("no log line about the presence failure:\n%s", log.String())
	}
}

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
// records, the newest first, with the total always visible.
func TestInspectRevokedOnlyWhenAskedAndLimited(t *testing.T) {
	e := newEnv(t)
	e.startWorker(stem.WorkerConfig{ID: "w1"})
	ctx := context.Background()
	target := stem.Target{Workers: []string{"w1"}}
	ids := []string{"r1", "r2", "r3", "r4", "r5"}
	for _, id := range ids { // one call each: increasing versions
		if _, err := e.controller().Revoke(ctx, target, stem.RevokeOptions{TaskIDs: []string{id}}); err != nil {
			t.Fatal(err)
		}
	}
	// A command with no payload, as an older controller sends it.
	raw, err := stem.ControllerSend(e.controller(), ctx, target, stemtype.CommandInspect, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, keys := inspectOf(t, raw)
	if slices.Contains(keys, "revoked") || p.RevokedTotal != 5 {
		t.Errorf("inspect without payload: keys %v, total %d; want no revoked list and total 5", keys, p.RevokedTotal)
	}
	r, err := e.controller().Inspect(ctx, target, stemtype.InspectRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if p, keys = inspectOf(t, r); slices.Contains(keys, "revoked") || p.RevokedTotal != 5 {
		t.Errorf("inspect not asking for revokes: keys %v, total %d", keys, p.RevokedTotal)
	}
	r, err = e.controller().Inspect(ctx, target, stemtype.InspectRequest{IncludeRevoked: true, Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	p, _ = inspectOf(t, r)
	var got []string
	for _, rec := range p.Revoked {
		got = append(got, rec.TaskID)
	}
	if !slices.Equal(got, []string{"r5", "r4"}) || p.RevokedTotal != 5 {
		t.Errorf("inspect with limit 2: revoked %v of %d, want [r5 r4] of 5", got, p.RevokedTotal)
	}
	r, err = e.controller().Inspect(ctx, target, stemtype.InspectRequest{IncludeRevoked: true})
	if err != nil {
		t.Fatal(err)
	}
	if p, _ = inspectOf(t, r); len(p.Revoked) != 5 || p.RevokedTotal != 5 {
		t.Errorf("inspect with every revoke: %d of %d", len(p.Revoked), p.RevokedTotal)
	}
	if _, err := e.controller().Inspect(ctx, target, stemtype.InspectRequest{Limit: -1}); err == nil {
		t.Error("Inspect accepted a negative limit")
	}
	r, err = stem.ControllerSend(e.controller(), ctx, target, stemtype.CommandInspect, stemtype.InspectRequest{IncludeRevoked: true, Limit: -1})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Replies) != 1 || r.Replies[0].Status != stemtype.ReplyError {
		t.Errorf("negative limit: want an error reply, got %+v", r)
	}
}

// Revoke says which ids the result backend does not know, and still stores
// and publishes them.
func TestRevokeReportsUnknownIDs(t *testing.T) {
	e := newEnv(t)
	stem.Register(e.reg, "later", func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }, stem.TaskOptions{})
	e.startWorker(stem.WorkerConfig{ID: "w1"})
	known := e.enqueue("later", nil, stem.EnqueueOptions{Countdown: time.Hour})
	ctx := context.Background()
	res, err := e.controller().Revoke(ctx, stem.Target{Workers: []string{"w1"}},
		stem.RevokeOptions{TaskIDs: []string{known, "mistyped"}})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Checked || !slices.Equal(res.Unknown, []string{"mistyped"}) || res.MarkErr != nil {
		t.Errorf("checked %v, unknown %v, mark error %v; want checked, [mistyped], none", res.Checked, res.Unknown, res.MarkErr)
	}
	var rr stemtype.RevokeReply
	if len(res.Replies.Replies) != 1 || json.Unmarshal(res.Replies.Replies[0].Payload, &rr) != nil ||
		!slices.Contains(rr.Tasks, "mistyped") || len(res.Records) != 2 {
		t.Errorf("the unknown id was not published: %+v", res.Replies)
	}
	if recs, err := e.revokes.List(ctx, e.ns); err != nil || !slices.ContainsFunc(recs, func(r stemtype.RevokeRecord) bool { return r.TaskID == "mistyped" }) {
		t.Errorf("the unknown id was not stored: %v %v", recs, err)
	}

	// Without a result backend nothing is known, and nothing is called
	// unknown.
	c, err := stem.NewController(stem.ControllerConfig{Namespace: e.ns, Control: e.control, Revokes: e.revokes})
	if err != nil {
		t.Fatal(err)
	}
	res, err = c.Revoke(ctx, stem.Target{Workers: []string{"w1"}}, stem.RevokeOptions{TaskIDs: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Checked || res.Unknown != nil {
		t.Errorf("without a result backend: checked %v, unknown %v", res.Checked, res.Unknown)
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

// conditionalFaultyResults adds a PutIfState that fails when asked to.
type conditionalFaultyResults struct{ faultyResults }

func (f conditionalFaultyResults) PutIfState(ctx context.Context, r *stemtype.TaskResult, states ...stemtype.State) (bool, error) {
	if f.fail["PutIfState"] {
		return false, errors.New("PutIfState broke")
	}
	return f.ResultBackend.(stemdriver.ConditionalPutter).PutIfState(ctx, r, states...)
}

// A revoke whose tasks cannot be marked cancelled is still stored and
// published, and the failure is reported, not dropped.
func TestRevokeReportsMarkCancelledErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		results func(stemdriver.ResultBackend) stemdriver.ResultBackend
		say     string
		checked bool
	}{
		{"GetMany", func(r stemdriver.ResultBackend) stemdriver.ResultBackend {
			return conditionalFaultyResults{faultyResults{r, map[string]bool{"GetMany": true}}}
		}, "GetMany broke", false},
		{"PutIfState", func(r stemdriver.ResultBackend) stemdriver.ResultBackend {
			return conditionalFaultyResults{faultyResults{r, map[string]bool{"PutIfState": true}}}
		}, "PutIfState broke", true},
		{"Put", func(r stemdriver.ResultBackend) stemdriver.ResultBackend {
			return faultyResults{r, map[string]bool{"Put": true}}
		}, "Put broke", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			stem.Register(e.reg, "later", func(*stem.TaskContext, stem.Args) (any, error) { return nil, nil }, stem.TaskOptions{})
			id := e.enqueue("later", nil, stem.EnqueueOptions{})
			var log testutil.SyncBuffer
			c, err := stem.NewController(stem.ControllerConfig{Namespace: e.ns, Control: e.control, Revokes: e.revokes,
				Results: tc.results(e.results), Logger: slog.New(slog.NewTextHandler(&log, nil))})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			res, err := c.Revoke(ctx, stem.Target{Timeout: time.Hour}, stem.RevokeOptions{TaskIDs: []string{id}})
			if err != nil {
				t.Fatalf("the revoke failed: %v", err)
			}
			if res.MarkErr == nil || !strings.Contains(res.MarkErr.Error(), tc.say) || res.Checked != tc.checked || len(res.Records) != 1 {
				t.Errorf("mark error %v (want %q), checked %v (want %v), records %d", res.MarkErr, tc.say, res.Checked, tc.checked, len(res.Records))
			}
			if recs, _ := e.revokes.List(ctx, e.ns); len(recs) != 1 {
				t.Errorf("revoke not stored: %v", recs)
			}
			// Revoke also logs it, for callers that drop the result.
			if _, err := c.Revoke(ctx, stem.Target{Timeout: time.Hour}, stem.RevokeOptions{TaskIDs: []string{id}}); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(log.String(), tc.say) {
				t.Errorf("Revoke did not log the failure:\n%s", log.String())
			}
		})
	}
}
