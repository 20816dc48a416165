package stempostgres

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
)

// Garbage another program NOTIFYs on a namespace's command channel, or
// stores as a control message, is logged, naming what is wrong, and the
// worker answers the next ping: notifications that are not ours (a
// negative targets' length once panicked the subscriber and took the
// worker down), a stored message that is not there, and messages that are
// not commands, inline and stored (a megabyte of junk).
func TestRawGarbageOnControlChannel(t *testing.T) {
	t.Parallel()
	u := testutil.PostgresSchema(t)
	ns := "garbage"
	var logs testutil.SyncBuffer
	ctx := context.Background()
	opts := stemdriver.Options{Namespace: ns, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	roles, _, c := openRawRoles(t, u, opts)

	notify := func(payload string) error {
		_, err := c.s.pool.Exec(ctx, `SELECT pg_notify($1, $2)`, c.cmdChannel, payload)
		return err
	}
	malformed := func(reason string) []string { return []string{"ignoring a malformed notification", reason} }
	cases := []systemtest.Garbage{
		{Name: "not a notification of ours", Raw: []byte("hello"), Logs: malformed("unknown notification kind")},
		{Name: "negative targets' length", Raw: []byte("m-1:x"), Logs: malformed("targets' length")},
		{Name: "targets' length past the end", Raw: []byte("m9:[]"), Logs: malformed("targets' length")},
		{Name: "no length", Raw: []byte("m[]{}"), Logs: malformed("without ':'")},
		{Name: "targets not a list", Raw: []byte(`m2:{}{"type":"ping"}`), Logs: malformed("not a JSON list")},
		{Name: "stored id not a number", Raw: []byte("r-1"), Logs: malformed("positive integer")},
		{Name: "stored message that is not there", Raw: []byte("r987654321"), Logs: []string{"cannot load a control message", "987654321"}},
	}
	for _, g := range systemtest.ControlGarbage() {
		if utf8.Valid(g.Raw) && !strings.ContainsRune(string(g.Raw), 0) && len(g.Raw) < maxInline-10 {
			g.Name += ", inline"
			g.Raw = append([]byte("m2:[]"), g.Raw...)
		} else {
			g.Name += ", stored"
			g.Raw = append([]byte("stored:"), g.Raw...)
		}
		cases = append(cases, g)
	}
	inject := func(raw []byte) error {
		if body, ok := strings.CutPrefix(string(raw), "stored:"); ok {
			// Publish stores it as is, as a row another program would write.
			_, err := c.s.pool.Exec(ctx, c.s.q.storeControl, ns, []string{}, []byte(body), c.cmdChannel)
			return err
		}
		return notify(string(raw))
	}
	systemtest.CheckRawControlGarbage(t, ns, roles, &logs, inject, cases)
}
