package remote

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// The circuit breaker: a broker that answers 5xx or 429, times out or
// cannot be reached is not asked again on every request. After
// breakerThreshold such failures in a row, calls stop (ErrUnavailable at
// once, no call) for a backoff that doubles from breakerMinBackoff to
// breakerMaxBackoff; then one call probes, and its outcome closes the
// breaker or opens it again for longer. The maximum is short because it
// is also how long enforced routes may stay unavailable after the broker
// is back, and one probe per gateway every few seconds costs a
// recovering broker nothing.
const (
	breakerThreshold  = 5
	breakerMinBackoff = time.Second
	breakerMaxBackoff = 5 * time.Second
)

var errBreakerOpen = fmt.Errorf("%w: calls suspended after repeated broker failures", ErrUnavailable)

type breaker struct {
	mu       sync.Mutex
	failures int           // in a row
	backoff  time.Duration // of the current opening; 0: closed
	until    time.Time     // open until then
	probing  bool          // the one call after until is in flight
	min, max time.Duration
}

func newBreaker() *breaker { return &breaker{min: breakerMinBackoff, max: breakerMaxBackoff} }

// allow reports whether a call may be made now.
func (b *breaker) allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.backoff == 0:
		return true
	case b.probing || now.Before(b.until):
		return false
	}
	b.probing = true
	return true
}

// done records the end of a call that allow admitted: failed says whether
// it counts against the broker. It reports whether the breaker opened
// (or opened again after a failed probe) and for how long.
func (b *breaker) done(failed bool, now time.Time) (opened bool, backoff time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	probe := b.probing
	b.probing = false
	if !failed {
		b.failures, b.backoff = 0, 0
		return false, 0
	}
	b.failures++
	switch {
	case probe:
		b.backoff = min(2*b.backoff, b.max)
	case b.backoff == 0 && b.failures >= breakerThreshold:
		b.backoff = b.min
	default:
		return false, 0
	}
	// Jitter, so that gateways that failed together do not probe together.
	wait := b.backoff/2 + rand.N(b.backoff/2+1)
	b.until = now.Add(wait)
	return true, wait
}

// cancel gives back an admission that made no call.
func (b *breaker) cancel() {
	b.mu.Lock()
	b.probing = false
	b.mu.Unlock()
}
