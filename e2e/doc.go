// Package e2e holds end-to-end tests of the stock stem binary: TestMain
// builds cmd/stem once, and each test runs workers and CLI commands as
// separate processes against a real Redis (STEM_TEST_REDIS_URL, default
// redis://127.0.0.1:6379/15), each in a namespace of its own so that tests
// run in parallel; docs_test.go also runs every console session of docs/
// through the binary. The package has no code of its own beyond this comment.
package e2e
