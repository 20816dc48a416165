package stemurl_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemurl"
)

// TestResolvePrecedence: a flag wins over its own variable, and a store
// without a URL of its own shares the next store's (revoke store -> result
// backend -> broker -> default), flags and variables alike.
func TestResolvePrecedence(t *testing.T) {
	const (
		fb, fr, fs = "redis://flag-broker/0", "redis://flag-results/1", "file:///flag/revokes"
		eb, er, es = "redis://env-broker/0", "redis://env-results/1", "file:///env/revokes"
	)
	def := stemurl.Default(func(string) string { return "" }) // no state directory in these environments
	env := func(b, r, s string) map[string]string {
		return map[string]string{stemurl.EnvBroker: b, stemurl.EnvResults: r, stemurl.EnvRevokeStore: s}
	}
	type want struct{ b, bFrom, r, rFrom, s, sFrom string }
	for _, tc := range []struct {
		name  string
		env   map[string]string
		flags stemurl.Flags
		want  want
	}{
		{"nothing", nil, stemurl.Flags{}, want{def, "default", def, "default", def, "default"}},
		{"--broker alone", nil, stemurl.Flags{Broker: fb},
			want{fb, "--broker", fb, "--broker", fb, "--broker"}},
		{"--broker over every env broker", env(eb, "", ""), stemurl.Flags{Broker: fb},
			want{fb, "--broker", fb, "--broker", fb, "--broker"}},
		{"--broker keeps env results and revokes", env(eb, er, es), stemurl.Flags{Broker: fb},
			want{fb, "--broker", er, stemurl.EnvResults, es, stemurl.EnvRevokeStore}},
		{"--broker, revokes follow env results", env("", er, ""), stemurl.Flags{Broker: fb},
			want{fb, "--broker", er, stemurl.EnvResults, er, stemurl.EnvResults}},
		{"--backend over env results, revokes follow it", env(eb, er, ""), stemurl.Flags{Results: fr},
			want{eb, stemurl.EnvBroker, fr, "--backend", fr, "--backend"}},
		{"--backend does not override env revoke store", env(eb, er, es), stemurl.Flags{Results: fr},
			want{eb, stemurl.EnvBroker, fr, "--backend", es, stemurl.EnvRevokeStore}},
		{"--revoke-store over everything", env(eb, er, es), stemurl.Flags{Broker: fb, Results: fr, Revokes: fs},
			want{fb, "--broker", fr, "--backend", fs, "--revoke-store"}},
		{"env only", env(eb, er, es), stemurl.Flags{},
			want{eb, stemurl.EnvBroker, er, stemurl.EnvResults, es, stemurl.EnvRevokeStore}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := stemurl.Resolve(func(k string) string { return tc.env[k] }, tc.flags)
			got := want{u.Broker, u.BrokerFrom, u.Results, u.ResultsFrom, u.Revokes, u.RevokesFrom}
			if got != tc.want {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
			if tc.flags == (stemurl.Flags{}) {
				if fe := stemurl.FromEnv(func(k string) string { return tc.env[k] }); fe != u {
					t.Fatalf("FromEnv = %+v, Resolve without flags = %+v", fe, u)
				}
			}
		})
	}
}

// TestOpenOpensExactlyTheRoles: Open opens the roles asked for and no
// other; Close closes them (their operations then fail with ErrClosed),
// clears them, and is a no-op the second time.
func TestOpenOpensExactlyTheRoles(t *testing.T) {
	ctx := context.Background()
	r := stemurl.New()
	u := stemurl.Resolve(homeIn(t), stemurl.Flags{})
	o, err := r.Open(ctx, u, stemurl.RoleResults|stemurl.RoleControl, stemdriver.Options{Namespace: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if o.Broker != nil || o.Revokes != nil || o.Results == nil || o.Control == nil {
		t.Fatalf("opened broker %v results %v revokes %v control %v, want results and control only", o.Broker, o.Results, o.Revokes, o.Control)
	}
	res := o.Results
	if _, err := res.Get(ctx, "x"); !errors.Is(err, stemdriver.ErrNotFound) {
		t.Fatalf("Get before Close: %v", err)
	}
	if err := o.Add(ctx, stemurl.RoleBroker); err != nil || o.Broker == nil {
		t.Fatalf("Add(broker): %v, broker %v", err, o.Broker)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	if o.Broker != nil || o.Results != nil || o.Control != nil {
		t.Fatal("Close left roles set")
	}
	if _, err := res.Get(ctx, "x"); !errors.Is(err, stemdriver.ErrClosed) {
		t.Fatalf("Get after Close: %v, want ErrClosed", err)
	}
	if err := o.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestOpenErrors: a role that cannot open is an *OpenError naming the role
// and the redacted URL, matching ErrBadConfig for a URL that can never
// work; a failed Add leaves what was open as it was; a non-durable revoke
// store is refused before anything opens.
func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	r := stemurl.New()
	opts := stemdriver.Options{Namespace: "t"}
	u := stemurl.Resolve(homeIn(t), stemurl.Flags{Revokes: "ftp://u:hunter2@h/x"})
	o, err := r.Open(ctx, u, stemurl.RoleResults, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	err = o.Add(ctx, stemurl.RoleBroker|stemurl.RoleRevokes)
	var oe *stemurl.OpenError
	if !errors.As(err, &oe) || oe.Role != stemurl.RoleRevokes || oe.From != "--revoke-store" || !errors.Is(err, stemdriver.ErrBadConfig) {
		t.Fatalf("Add(broker, bad revoke store) = %v, want an *OpenError of the revoke store matching ErrBadConfig", err)
	}
	if strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "cannot open revoke store (from --revoke-store) ftp://u:xxxxx@h/x") {
		t.Fatalf("error text %q", err)
	}
	if o.Broker != nil || o.Revokes != nil || o.Results == nil {
		t.Fatalf("failed Add changed what is open: broker %v revokes %v results %v", o.Broker, o.Revokes, o.Results)
	}
	if _, err := o.Results.Get(ctx, "x"); !errors.Is(err, stemdriver.ErrNotFound) {
		t.Fatalf("results after a failed Add: %v", err)
	}

	u = stemurl.Resolve(func(string) string { return "" }, stemurl.Flags{Broker: "redis://127.0.0.1:1/0", Revokes: "memory://"})
	if _, err := r.Open(ctx, u, stemurl.RoleRevokes|stemurl.RoleControl, opts); !errors.Is(err, stemdriver.ErrBadConfig) || errors.As(err, &oe) {
		t.Fatalf("Open(memory revokes beside redis) = %v, want Check's configuration error", err)
	}
	if _, err := r.Open(ctx, u, stemurl.RoleControl, opts); !errors.As(err, &oe) || oe.Role != stemurl.RoleControl ||
		errors.Is(err, stemdriver.ErrBadConfig) || !strings.HasPrefix(err.Error(), "cannot open broker redis://127.0.0.1:1/0: ") {
		t.Fatalf("Open(control at a closed port) = %v, want an unreachable broker", err)
	}
}

// homeIn returns an environment whose state directory (STEM_HOME) is a
// directory of t's own, so that the embedded default is a file of t's.
func homeIn(t *testing.T) func(string) string {
	dir := t.TempDir()
	return func(k string) string {
		if k == stemurl.EnvHome {
			return dir
		}
		return ""
	}
}
