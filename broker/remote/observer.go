package remote

import "time"

// Observer receives a Validator's events, so the embedding program can
// count them in its own metrics registry without this package importing
// a metrics library. Methods are called on the request path, concurrently:
// they must be cheap and safe for concurrent use.
type Observer interface {
	// CacheHit: a fresh cached answer, positive or negative, was served.
	CacheHit()
	// CacheMiss: the cache had no fresh answer for a token that passed
	// the local checks; it goes to the broker, or joins a call in flight.
	CacheMiss()
	// CacheEviction: an entry was dropped to stay within CacheSize.
	CacheEviction()
	// StaleHit: an expired positive entry was served under StaleIfError
	// while the broker failed.
	StaleHit()
	// Call: one call to the broker ended with outcome after d.
	Call(outcome Outcome, d time.Duration)
}

// Outcome is how a call to the broker ended.
type Outcome uint8

// Outcomes of a call to the broker.
const (
	// OutcomeValid: the broker confirmed the token.
	OutcomeValid Outcome = iota
	// OutcomeInvalid: the broker answered "valid":false, or its claims
	// have expired.
	OutcomeInvalid
	// OutcomeError: no usable answer (connection refused, TLS failure,
	// a status other than 200, a malformed body).
	OutcomeError
	// OutcomeTimeout: no answer within Timeout.
	OutcomeTimeout
)

// NumOutcomes is the number of Outcome values, for tables indexed by one.
const NumOutcomes = 4

// String returns the outcome's metric label: valid, invalid, error or
// timeout.
func (o Outcome) String() string {
	switch o {
	case OutcomeValid:
		return "valid"
	case OutcomeInvalid:
		return "invalid"
	case OutcomeError:
		return "error"
	case OutcomeTimeout:
		return "timeout"
	}
	return "unknown"
}

// nopObserver is the Observer of Options without one.
type nopObserver struct{}

func (nopObserver) CacheHit()                   {}
func (nopObserver) CacheMiss()                  {}
func (nopObserver) CacheEviction()              {}
func (nopObserver) StaleHit()                   {}
func (nopObserver) Call(Outcome, time.Duration) {}

// HealthObserver is what an Observer may also implement to receive the
// events of the Validator's link to the broker: the revocation feed and
// key set of local mode, the circuit breaker and the per-client bound of
// calls. It is a separate interface so that an Observer written before it
// keeps compiling; a Validator checks for it once, in New. The same rules
// apply: cheap, and safe for concurrent use.
type HealthObserver interface {
	// FeedConnected: a feed stream delivered its first heartbeat.
	FeedConnected()
	// FeedDisconnected: a stream that had delivered a heartbeat ended.
	FeedDisconnected()
	// FeedStale: the feed has been silent past MaxStaleness; tokens are
	// refused (or validated through the broker with Fallback) until a
	// heartbeat arrives. Counted once per silence.
	FeedStale()
	// KeysRefreshed: a fetch of the broker's JWKS succeeded or failed.
	KeysRefreshed(ok bool)
	// BreakerOpened: calls to the broker are suspended after repeated
	// failures (5xx, 429, timeouts, no connection).
	BreakerOpened()
	// ClientLimited: a call for an uncached token was refused because its
	// client had reached its bound.
	ClientLimited()
}

func (nopObserver) FeedConnected()     {}
func (nopObserver) FeedDisconnected()  {}
func (nopObserver) FeedStale()         {}
func (nopObserver) KeysRefreshed(bool) {}
func (nopObserver) BreakerOpened()     {}
func (nopObserver) ClientLimited()     {}
