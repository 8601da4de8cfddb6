//go:build race

package console_test

// raceEnabled: the race detector slows seeding tenfold, and a race run is
// about concurrency, not scale, so TestConsoleAtScale seeds less.
const raceEnabled = true
