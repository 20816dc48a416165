package stemsqlite

import (
	"context"
	"database/sql"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stem-go/stem/internal/systemtest"
	"github.com/stem-go/stem/internal/testutil"
)

// Rows another program writes to stem_control that are not commands (not
// JSON, truncated JSON, JSON of the wrong type, a megabyte of junk, and
// bodies of SQLite's other types: text, an integer, a real) are logged as
// malformed control messages, and the worker answers the next ping.
func TestRawGarbageOnControlChannel(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "stem.db")
	u := "sqlite://" + path
	ns := "garbage"
	var logs testutil.SyncBuffer
	ctx := context.Background()
	opts := testOptsWith(ns, slog.New(slog.NewTextHandler(&logs, nil)))
	r := systemtest.Roles{
		Broker:  opened[*Broker](t)(OpenBroker(ctx, u, opts)),
		Results: opened[*Results](t)(OpenResults(ctx, u, opts)),
		Revokes: opened[*Revokes](t)(OpenRevokes(ctx, u, opts)),
		Control: opened[*Control](t)(OpenControl(ctx, u, opts)),
	}
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })

	cases := systemtest.ControlGarbage()
	for _, c := range []struct{ name, sql, reason string }{
		{"a text body", "'not json'", "invalid character"},
		{"an integer body", "42", "cannot unmarshal number"},
		{"a real body", "1.5", "cannot unmarshal number"},
		{"an empty blob", "X''", "unexpected end of JSON input"},
	} {
		cases = append(cases, systemtest.Garbage{Name: c.name, Raw: []byte("sql:" + c.sql),
			Logs: []string{"malformed control message", c.reason}})
	}
	inject := func(raw []byte) error {
		body := any(raw)
		expr := "?3"
		if s, ok := strings.CutPrefix(string(raw), "sql:"); ok {
			expr, body = s, nil
		}
		_, err := db.ExecContext(ctx, `INSERT INTO stem_control (namespace, target, body, created_at) VALUES (?1, '*', `+expr+`, ?2)`,
			ns, time.Now().UnixNano(), body)
		return err
	}
	systemtest.CheckRawControlGarbage(t, ns, r, &logs, inject, cases)
}
