//go:build !race

package caddymodule_test

// raceEnabled: the race detector is on.
const raceEnabled = false
