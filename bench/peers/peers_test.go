package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/stem-go/stem/internal/testutil"
)

// runJSON runs the command line with -json and returns its figure.
func runJSON(t *testing.T, args ...string) figure {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := cliMain(append(args, "-json"), &out, &errOut); code != 0 {
		t.Fatalf("peers %s: exit %d\nstderr:\n%s", strings.Join(args, " "), code, errOut.String())
	}
	var f figure
	if err := json.Unmarshal(out.Bytes(), &f); err != nil {
		t.Fatalf("peers %s: stdout %q is not a figure: %v", strings.Join(args, " "), out.String(), err)
	}
	return f
}

// runAll runs every scenario briefly on one system and URL and checks that
// each figure was measured.
func runAll(t *testing.T, system, url string, extra ...string) {
	t.Helper()
	base := append([]string{"-system", system, "-url", url, "-concurrency", "4", "-tasks", "60", "-batch", "25",
		"-rounds", "3", "-interval", "5ms", "-idle", "300ms"}, extra...)
	for _, sc := range []string{"drain", "pickup", "idlecpu", "cancel", "enqueue"} {
		t.Run(sc, func(t *testing.T) {
			f := runJSON(t, append(base, "-scenario", sc)...)
			if f.System != system || f.Scenario != sc || f.Concurrency != 4 {
				t.Fatalf("figure %+v: want system %s, scenario %s, concurrency 4", f, system, sc)
			}
			switch sc {
			case "drain":
				if f.Tasks != 60 || f.TasksPerSec <= 0 || f.EnqueuePerSec <= 0 {
					t.Errorf("drain figure %+v: want 60 tasks and positive rates", f)
				}
			case "pickup", "cancel":
				if f.Rounds != 3 || f.P50Ms <= 0 || f.P99Ms < f.P50Ms || f.MaxMs < f.P99Ms {
					t.Errorf("%s figure %+v: want 3 rounds and 0 < p50 <= p99 <= max", sc, f)
				}
			case "enqueue":
				if f.Tasks != 60 || f.Producers != 8 || f.EnqueuePerSec <= 0 || f.ClientCPUUs <= 0 {
					t.Errorf("enqueue figure %+v: want 60 tasks from 8 producers, a positive rate and the client's CPU a task", f)
				}
				if onRedis := strings.HasPrefix(url, "redis"); onRedis != (f.ServerCPUUs > 0) {
					t.Errorf("enqueue figure %+v on %s: want the server's CPU a task on Redis only", f, system)
				}
			case "idlecpu":
				if f.IdleSeconds < 0.3 || f.CPUPercent < 0 {
					t.Errorf("idlecpu figure %+v: want at least 0.3s idle and a CPU share", f)
				}
			}
		})
	}
}

func TestStemMemory(t *testing.T) {
	runAll(t, "stem", "memory://peers-test")
}

func TestStemRedis(t *testing.T) {
	runAll(t, "stem", testutil.NeedRedis(t))
}

func TestRiverSQLite(t *testing.T) {
	dir := t.TempDir()
	runAll(t, "river", "sqlite://"+filepath.Join(dir, "river.db"), "-river-fetch-cooldown", "1ms")
	left, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("%s holds %d entries after the runs, want none (each run removes its fresh file)", dir, len(left))
	}
}

// postgresURL returns the test Postgres's URL, or skips (fails, when
// services are required) when it does not answer.
func postgresURL(t *testing.T) string {
	t.Helper()
	u := os.Getenv("STEM_TEST_POSTGRES_URL")
	if u == "" {
		u = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u)
	if err == nil {
		err = conn.Ping(ctx)
		conn.Close(ctx)
	}
	if err != nil {
		testutil.SkipOrFail(t, "no Postgres (set STEM_TEST_POSTGRES_URL): %v", err)
	}
	return u
}

func TestRiverPostgres(t *testing.T) {
	u := postgresURL(t)
	runAll(t, "river", u)

	// Each run's schema is dropped when it closes.
	ctx := context.Background()
	sys, err := openSystem(ctx, config{System: "river", URL: u, Concurrency: 1}, newProbe(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	schema := sys.(*riverSystem[pgx.Tx]).schema
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	count := func() int {
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 1 {
		t.Fatalf("schema %q: %d while open, want 1", schema, n)
	}
	if err := sys.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 0 {
		t.Errorf("schema %q: %d after Close, want 0", schema, n)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"-system", "celery", "-url", "memory://", "-scenario", "drain"},
		{"-system", "stem", "-scenario", "drain"},
		{"-system", "stem", "-url", "memory://", "-scenario", "sprint"},
		{"-system", "stem", "-url", "memory://", "-scenario", "drain", "-concurrency", "0"},
		{"-system", "stem", "-url", "memory://", "-scenario", "drain", "-river-fetch-cooldown", "1ms"},
		{"-system", "stem", "-url", "memory://", "-scenario", "drain", "extra"},
	} {
		var out, errOut bytes.Buffer
		if code := cliMain(args, &out, &errOut); code != 2 {
			t.Errorf("peers %q: exit %d, want 2 (usage)", args, code)
		}
		if errOut.Len() == 0 {
			t.Errorf("peers %q: no message on stderr", args)
		}
	}
}

func TestBadURLIsRedacted(t *testing.T) {
	for _, system := range []string{"stem", "river"} {
		var out, errOut bytes.Buffer
		code := cliMain([]string{"-system", system, "-url", "bogus://user:hunter2@127.0.0.1:1/x", "-scenario", "pickup"}, &out, &errOut)
		if code != 1 {
			t.Errorf("%s on a bogus URL: exit %d, want 1", system, code)
		}
		if strings.Contains(errOut.String(), "hunter2") || !strings.Contains(errOut.String(), "bogus") {
			t.Errorf("%s on a bogus URL: stderr %q: want the URL named, its password not", system, errOut.String())
		}
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {1, time.Millisecond}} {
		if got := percentile(ds, c.p); got != c.want {
			t.Errorf("percentile(1..100ms, %v) = %v, want %v", c.p, got, c.want)
		}
	}
	if got := percentile([]time.Duration{7}, 99); got != 7 {
		t.Errorf("percentile of one = %v, want it", got)
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("percentile of none = %v, want 0", got)
	}
}

func TestFreshSQLite(t *testing.T) {
	parent := t.TempDir()
	u, cleanup, err := freshSQLite("sqlite://"+filepath.Join(parent, "x.db")+"?_pragma=journal_mode(WAL)",
		func(path, query string) string { return path + query })
	if err != nil {
		t.Fatal(err)
	}
	path, query, _ := strings.Cut(u, "?")
	if filepath.Dir(filepath.Dir(path)) != parent || query != "_pragma=journal_mode(WAL)" {
		t.Errorf("fresh URL %q: want a file in a new directory under %s, and the query kept", u, parent)
	}
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(path)); !os.IsNotExist(err) {
		t.Errorf("after cleanup, %s: %v, want it gone", filepath.Dir(path), err)
	}
}

func TestTable(t *testing.T) {
	in := `{"system":"river","backend":"sqlite","scenario":"drain","concurrency":10,"tasks_per_s":100}
{"system":"river","backend":"sqlite","scenario":"drain","concurrency":10,"tasks_per_s":300}
{"system":"river","backend":"sqlite","scenario":"drain","concurrency":10,"tasks_per_s":200}

{"system":"river","backend":"sqlite","fetch_cooldown":"1ms","scenario":"cancel","concurrency":10,"p50_ms":1.25,"p99_ms":3.5}
{"system":"stem","backend":"sqlite","scenario":"idlecpu","concurrency":10,"cpu_pct":0.123}
{"system":"stem","backend":"sqlite","scenario":"drain","concurrency":50,"tasks_per_s":121000}
{"system":"stem","backend":"sqlite","scenario":"pickup","concurrency":10,"p50_ms":0.84,"p99_ms":12.5}
`
	figs, err := readFigures(strings.NewReader(in), "in")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := writeTable(figs, &b); err != nil {
		t.Fatal(err)
	}
	want := `| system | drain C=10 | drain C=50 | idle pickup p50 / p99 | idle CPU | cancel to ctx done p50 / p99 |
|---|---|---|---|---|---|
| river-sqlite | 200/s (median of 3) |  |  |  |  |
| river-sqlite (FetchCooldown 1ms) |  |  |  |  | 1.25 / 3.50 ms |
| stem-sqlite |  | 121k/s | 0.84 / 12.5 ms | 0.12% |  |
`
	if got := b.String(); got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
	if _, err := readFigures(strings.NewReader("{\"system\":\"stem\"}\n"), "in"); err == nil || !strings.Contains(err.Error(), "in:1") {
		t.Errorf("a figure without a scenario: error %v, want one naming in:1", err)
	}
}

func TestFreshSQLiteRelative(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.Mkdir("rel", 0o700); err != nil {
		t.Fatal(err)
	}
	u, cleanup, err := freshSQLite("sqlite://rel/x.db", func(path, query string) string { return "sqlite://" + path + query })
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	path := strings.TrimPrefix(u, "sqlite://")
	wd, _ := os.Getwd()
	if !filepath.IsAbs(path) || filepath.Dir(filepath.Dir(path)) != filepath.Join(wd, "rel") {
		t.Errorf("fresh URL for sqlite://rel/x.db: %q, want an absolute path in a new directory under %s", u, filepath.Join(wd, "rel"))
	}
}

// TestTableRatiosAndCancelOutcome: rates get their ratio to the first row
// with the figure, and the cancel scenario says whether the task ran again.
func TestTableRatiosAndCancelOutcome(t *testing.T) {
	figs := []figure{
		{System: "asynq", Backend: "redis", Scenario: "drain", Concurrency: 50, TasksPerSec: 10000},
		{System: "asynq", Backend: "redis", Scenario: "cancel", P50Ms: 0.3, P99Ms: 0.4, CancelRerun: 3},
		{System: "stem", Backend: "redis", Scenario: "drain", Concurrency: 50, TasksPerSec: 50000},
		{System: "stem", Backend: "redis", Scenario: "cancel", P50Ms: 0.5, P99Ms: 0.9, CancelFinal: 3},
	}
	var b strings.Builder
	if err := writeTable(figs, &b); err != nil {
		t.Fatal(err)
	}
	want := `| system | drain C=50 | cancel to ctx done p50 / p99 | after cancel |
|---|---|---|---|
| asynq-redis | 10.0k/s | 0.30 / 0.40 ms | **runs again** (3/3) |
| stem-redis | 50.0k/s (5.00x) | 0.50 / 0.90 ms | final (3/3) |

Rates in parentheses: the ratio to the first row that has the figure.
`
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}

// TestTableEnqueueCPU: the one-by-one enqueue's CPU a task gets a column of
// its own, with "n/a" where the server does not report its CPU.
func TestTableEnqueueCPU(t *testing.T) {
	figs := []figure{
		{System: "asynq", Backend: "redis", Scenario: "enqueue", EnqueuePerSec: 50000, ClientCPUUs: 17, ServerCPUUs: 14.2},
		{System: "stem", Backend: "redis", Scenario: "enqueue", EnqueuePerSec: 60000, ClientCPUUs: 16, ServerCPUUs: 10},
		{System: "stem", Backend: "redis", Scenario: "enqueue", EnqueuePerSec: 40000, ClientCPUUs: 20, ServerCPUUs: 12},
		{System: "stem", Backend: "postgres", Scenario: "enqueue", EnqueuePerSec: 9000, ClientCPUUs: 30},
	}
	var b strings.Builder
	if err := writeTable(figs, &b); err != nil {
		t.Fatal(err)
	}
	want := `| system | enqueue one by one | one by one, CPU a task: client / server |
|---|---|---|
| asynq-redis | 50.0k/s | 17.0 / 14.2 µs |
| stem-redis | 50.0k/s (median of 2) (1.00x) | 18.0 / 11.0 µs (median of 2) |
| stem-postgres | 9.0k/s (0.18x) | 30.0 / n/a µs |

Rates in parentheses: the ratio to the first row that has the figure.
`
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestParseServerCPU(t *testing.T) {
	got, err := parseServerCPU("# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\nused_cpu_sys_children:9.0\r\n")
	if err != nil || got != 3750*time.Millisecond {
		t.Errorf("parseServerCPU = %v, %v; want 3.75s", got, err)
	}
	for _, bad := range []string{"# CPU\r\nused_cpu_sys:1.5\r\n", "used_cpu_sys:x\r\nused_cpu_user:1\r\n"} {
		if _, err := parseServerCPU(bad); err == nil {
			t.Errorf("parseServerCPU(%q): no error", bad)
		}
	}
}

// TestEnqueueWithoutInfo: a Redis user the server refuses INFO still gets
// the one-by-one enqueue's figure, without the server's CPU.
func TestEnqueueWithoutInfo(t *testing.T) {
	u := testutil.NeedRedis(t)
	opt, err := redis.ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	admin := redis.NewClient(opt)
	defer admin.Close()
	ctx := context.Background()
	user := fmt.Sprintf("peers-noinfo-%d", time.Now().UnixNano())
	if err := admin.Do(ctx, "ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", "-info").Err(); err != nil {
		t.Fatalf("create ACL user: %v", err)
	}
	t.Cleanup(func() { admin.Do(context.Background(), "ACL", "DELUSER", user) })
	noInfo := fmt.Sprintf("redis://%s:pw@%s/%d", user, opt.Addr, opt.DB)
	f := runJSON(t, "-system", "stem", "-url", noInfo, "-scenario", "enqueue", "-tasks", "60", "-concurrency", "4")
	if f.EnqueuePerSec <= 0 || f.ClientCPUUs <= 0 || f.ServerCPUUs != 0 {
		t.Errorf("enqueue figure %+v: want a rate and the client's CPU, and no server CPU", f)
	}
}
