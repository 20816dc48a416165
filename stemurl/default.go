package stemurl

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"

	"github.com/stem-go/stem/stemsqlite"
)

// EnvHome names the directory that holds the embedded default store
// (see StateDir).
const EnvHome = "STEM_HOME"

// DefaultFile is the name of the embedded default's SQLite file in the
// state directory.
const DefaultFile = "stem.db"

// StateDir returns the directory of the embedded default store, from the
// environment (getenv is os.Getenv in programs), the first that is set:
//
//	$STEM_HOME
//	$XDG_STATE_HOME/stem
//	%LocalAppData%\stem          (Windows)
//	$HOME/.local/state/stem
//
// A relative directory is taken from the working directory and returned
// absolute. StateDir returns "" when none of these variables is set.
func StateDir(getenv func(string) string) string {
	var dir string
	switch {
	case getenv(EnvHome) != "":
		dir = getenv(EnvHome)
	case getenv("XDG_STATE_HOME") != "":
		dir = filepath.Join(getenv("XDG_STATE_HOME"), "stem")
	case runtime.GOOS == "windows" && getenv("LocalAppData") != "":
		dir = filepath.Join(getenv("LocalAppData"), "stem")
	case getenv("HOME") != "":
		dir = filepath.Join(getenv("HOME"), ".local", "state", "stem")
	default:
		return ""
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	return dir
}

// Default returns the URL of the embedded default store: the SQLite file
// DefaultFile in StateDir, as sqlite:///path/to/stem.db. Every program
// and command of one user on one host that configures nothing shares it,
// so a worker started in one terminal is reached from another. With no
// state directory (StateDir is ""), it is "sqlite://", which opens with
// an error saying which variable to set.
func Default(getenv func(string) string) string {
	dir := StateDir(getenv)
	if dir == "" {
		return "sqlite://"
	}
	u := url.URL{Scheme: "sqlite", Path: filepath.ToSlash(filepath.Join(dir, DefaultFile))}
	return u.String()
}

// prepareDefault readies the embedded default store at raw before it is
// opened: with no state directory it returns a configuration error saying
// what to set; otherwise it creates the directory of the SQLite file
// (owner only), so that a new user's first command works. Other URLs name
// their directories themselves.
func prepareDefault(raw string) error {
	if scheme(raw) != "sqlite" {
		return nil
	}
	path, err := stemsqlite.PathFromURL(raw)
	if err != nil {
		return badConfig("stem: no state directory for the embedded default store: set %s (or HOME), or %s", EnvHome, EnvBroker)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("stem: create the state directory of the embedded default store: %w", err)
	}
	return nil
}
