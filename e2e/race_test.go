//go:build race

package e2e

// raceEnabled builds the stem binary with the race detector when the tests
// themselves run with -race, so that races in workers fail the tests too.
const raceEnabled = true
