package stem

import (
	"runtime/debug"
	"sync"
)

// modulePath is this module's path, as go.mod names it.
const modulePath = "github.com/stem-go/stem"

// Version returns the version of stem built into the running program, as
// the Go toolchain recorded it: a release tag such as v1.2.3, a pseudo
// version for a commit, or "(devel)" for a build of the module itself
// without version control information. Workers announce it, and `stem
// worker status` lists it, so a fleet of mixed builds is spotted.
func Version() string { return version() }

var version = sync.OnceValue(func() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	if info.Main.Path == modulePath {
		return info.Main.Version
	}
	for _, dep := range info.Deps {
		if dep.Path == modulePath {
			if dep.Replace != nil && dep.Replace.Version != "" {
				return dep.Replace.Version
			}
			return dep.Version
		}
	}
	return "(unknown)"
})
