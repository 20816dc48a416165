package e2e

import (
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stem-go/stem/internal/testutil"
)

// stores holds the store URL of each test on each backend.
var stores sync.Map // backend + test name -> URL

// backendURL returns the URL of backend b's store for a cluster of t:
// every cluster of one test shares it (namespaces keep them apart), as
// the hosts of one deployment would, and tests do not share stores. A
// SQLite store is a file in the run's directory; a Postgres store is a
// schema of the test database of its own, dropped when t ends.
func backendURL(t *testing.T, b backend) string {
	t.Helper()
	key := string(b) + "\x00" + t.Name()
	if u, ok := stores.Load(key); ok {
		return u.(string)
	}
	var u string
	switch b {
	case onSQLite:
		name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
		u = "sqlite://" + filepath.Join(tmpDir, name+".db")
	case onPostgres:
		u = testutil.PostgresSchema(t)
	default:
		t.Fatalf("e2e: backend %s is not wired into the tests", b)
	}
	stores.Store(key, u)
	return u
}
