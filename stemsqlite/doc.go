// Package stemsqlite is stem's SQLite backend: broker, result backend,
// revoke store and control transport in one database file, on
// modernc.org/sqlite (pure Go, no cgo). Several worker processes and the
// CLI share one file; no server is needed.
package stemsqlite
