package e2e

import (
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// sqliteFiles holds the SQLite file of each top-level test.
var sqliteFiles sync.Map // test name -> path

// backendURL returns the URL of backend b's store for a cluster of t:
// every cluster of one top-level test shares it (namespaces keep them
// apart), as the hosts of one deployment would.
//
// SQLite: one file per top-level test, since a file is one deployment of
// one host, and the run's tests together are far more processes than one
// host's deployment.
func backendURL(t *testing.T, b backend) string {
	t.Helper()
	switch b {
	case onSQLite:
		top, _, _ := strings.Cut(t.Name(), "/")
		path, _ := sqliteFiles.LoadOrStore(top, filepath.Join(tmpDir, top+".db"))
		return "sqlite://" + path.(string)
	}
	t.Fatalf("e2e: backend %s is not wired into the tests", b)
	return ""
}
