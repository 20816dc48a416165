package e2e

import (
	"testing"
)

// backendURL returns the URL of the shared store of backend b that every
// cluster on b uses, namespaces keeping them apart, as one deployment's
// hosts would share it.
func backendURL(t *testing.T, b backend) string {
	t.Helper()
	t.Fatalf("e2e: backend %s is not wired into the tests", b)
	return ""
}
