//go:build !race

package isolated_test

// raceEnabled builds the stem binary with the race detector when the tests
// run with -race, so that races in the worker's pool fail the tests too.
const raceEnabled = false
