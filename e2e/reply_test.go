package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
	"github.com/stem-go/stem/stemurl"
)

// TestUnreadableReplyExits70: a live worker that replies with status ok
// and a payload that does not decode as the command's reply (another
// version, a broken build) has not answered: the binary names it on stderr
// and exits 70, never 0, for each worker command.
func TestUnreadableReplyExits70(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, store storeKind) {
		c := newCluster(t, store)
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		ctl, err := stemurl.New().OpenControl(ctx, c.url, stemdriver.Options{Namespace: c.ns})
		if err != nil {
			t.Fatal(err)
		}
		defer ctl.Close()
		sub, err := ctl.Subscribe(ctx, "odd")
		if err != nil {
			t.Fatal(err)
		}
		if err := ctl.Announce(ctx, stemtype.WorkerInfo{ID: "odd", Namespace: c.ns}, time.Minute); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for msg := range sub.C() {
				var cmd stemtype.ControlCommand
				if json.Unmarshal(msg, &cmd) != nil {
					continue
				}
				b, _ := json.Marshal(stemtype.ControlReply{RequestID: cmd.RequestID, WorkerID: "odd", Status: stemtype.ReplyOK,
					Payload: json.RawMessage(`{"timestamp":1,"inflight":"x","active":1,"pid":"x","tasks":"x"}`)})
				_ = ctl.Reply(ctx, cmd.RequestID, b)
			}
		}()
		defer func() { _ = sub.Close(); <-done }()
		for _, args := range [][]string{
			{"worker", "ping", "--worker", "odd"},
			{"worker", "inspect", "--json"},
			{"worker", "stats", "--worker", "odd"},
			{"worker", "revoke", "--task", "t-" + randomHex(8), "--json"},
		} {
			r := c.run(args...)
			if r.code != 70 || !strings.Contains(r.stderr, "worker odd replied ok, but its reply cannot be decoded") {
				t.Errorf("%q with an unreadable reply: want exit 70 naming worker odd, got %s", args, r)
			}
		}
	})
}
