package stemurl_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemsqlite"
	"github.com/stem-go/stem/stemurl"
)

// TestStateDir: STEM_HOME, then XDG_STATE_HOME/stem, then
// ~/.local/state/stem; a relative directory comes back absolute; none set
// is "".
func TestStateDir(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("the order below is the Unix one")
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"nothing", nil, ""},
		{"HOME", map[string]string{"HOME": "/home/u"}, "/home/u/.local/state/stem"},
		{"XDG over HOME", map[string]string{"HOME": "/home/u", "XDG_STATE_HOME": "/xdg"}, "/xdg/stem"},
		{"STEM_HOME over all", map[string]string{"HOME": "/home/u", "XDG_STATE_HOME": "/xdg", stemurl.EnvHome: "/srv/stem"}, "/srv/stem"},
		{"relative STEM_HOME", map[string]string{stemurl.EnvHome: "state"}, filepath.Join(wd, "state")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := stemurl.StateDir(func(k string) string { return tc.env[k] }); got != tc.want {
				t.Errorf("StateDir = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestDefaultURLRoundTrips: the default URL names DefaultFile in the state
// directory, and stemsqlite reads the same path back, spaces and all.
func TestDefaultURLRoundTrips(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a dir with spaces & 100%")
	u := stemurl.Default(func(k string) string { return map[string]string{stemurl.EnvHome: dir}[k] })
	if !strings.HasPrefix(u, "sqlite:///") {
		t.Fatalf("Default = %q, want a sqlite:/// URL", u)
	}
	p, err := stemsqlite.PathFromURL(u)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, stemurl.DefaultFile); p != want {
		t.Errorf("path of %q = %q, want %q", u, p, want)
	}
}

// TestDefaultStoreCreatesItsDirectory: with nothing configured, Open
// creates the state directory (owner only) and every role opens on the
// one file; with no state directory at all it is a configuration error
// naming STEM_HOME.
func TestDefaultStoreCreatesItsDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "state")
	env := map[string]string{stemurl.EnvHome: dir}
	o, err := stemurl.New().Open(context.Background(), stemurl.FromEnv(func(k string) string { return env[k] }),
		stemurl.AllRoles, stemdriver.Options{Namespace: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm() != 0o700 {
		t.Errorf("state directory mode = %v, want 0700", fi.Mode().Perm())
	}
	if _, err := os.Stat(filepath.Join(dir, stemurl.DefaultFile)); err != nil {
		t.Errorf("the default file: %v", err)
	}

	_, err = stemurl.New().Open(context.Background(), stemurl.FromEnv(func(string) string { return "" }),
		stemurl.RoleBroker, stemdriver.Options{Namespace: "t"})
	if !errors.Is(err, stemdriver.ErrBadConfig) || !strings.Contains(err.Error(), stemurl.EnvHome) {
		t.Errorf("open with no state directory: %v, want a configuration error naming %s", err, stemurl.EnvHome)
	}
}
