package testutil

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvPostgresURL names the variable that sets the test Postgres's URL.
const EnvPostgresURL = "STEM_TEST_POSTGRES_URL"

// DefaultPostgresURL is the test Postgres when EnvPostgresURL is not set:
// database test of the local server, trust authentication.
const DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// PostgresURL returns the test Postgres's URL.
func PostgresURL() string {
	if u := os.Getenv(EnvPostgresURL); u != "" {
		return u
	}
	return DefaultPostgresURL
}

var postgresOnce struct {
	sync.Once
	err error
}

// NeedPostgres returns the test Postgres's URL, or skips tb (fails it, when
// services are required) when that server does not answer. The server is
// pinged once per process.
func NeedPostgres(tb testing.TB) string {
	tb.Helper()
	u := PostgresURL()
	postgresOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, u)
		if err != nil {
			postgresOnce.err = err
			return
		}
		defer conn.Close(ctx)
		postgresOnce.err = conn.Ping(ctx)
	})
	if postgresOnce.err != nil {
		SkipOrFail(tb, "Postgres at %s unreachable (set %s): %v", postgresHost(u), EnvPostgresURL, postgresOnce.err)
	}
	return u
}

// postgresHost describes u without its user information or query.
func postgresHost(u string) string {
	pu, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return pu.Host + pu.Path
}

// PostgresSchema returns the test Postgres's URL with a fresh schema name
// as its search_path (the schema itself is left for the code under test to
// create), or skips tb like NeedPostgres. The schema is dropped, with
// everything in it, when tb ends: register it before opening drivers on
// the URL, so that their Close runs first.
func PostgresSchema(tb testing.TB) string {
	tb.Helper()
	base := NeedPostgres(tb)
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "stemtest_" + hex.EncodeToString(b[:])
	pu, err := url.Parse(base)
	if err != nil {
		tb.Fatalf("testutil: %s: %v", EnvPostgresURL, err)
	}
	q := pu.Query()
	q.Set("search_path", schema)
	pu.RawQuery = q.Encode()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			tb.Errorf("testutil: drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			tb.Errorf("testutil: drop schema %s: %v", schema, err)
		}
	})
	return pu.String()
}
