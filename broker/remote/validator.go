// Package remote validates AgentWrit tokens through an external broker's
// POST /v1/token/validate (the upstream broker, or another Caddy serving
// this project's broker) instead of an embedded one.
//
// Answers are cached in a bounded LRU keyed by the token's SHA-256, for at
// most Options.CacheTTL and never past the token's exp; concurrent
// validations of one uncached token share one call. Garbage is refused
// locally, without a call. When no answer can be had the result is
// ErrUnavailable, never an allow: the caller fails closed. The package
// knows nothing of Caddy; its events reach the embedder's metrics through
// Observer and its log lines through a *slog.Logger.
package remote

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// ErrUnavailable means the token could not be checked at all: the broker
// is unreachable, timed out, answered a status other than 200 or a
// malformed body. A gateway answers 503 and lets nothing through. A
// definitive "no" is not ErrUnavailable: it wraps broker.ErrInvalidToken.
var ErrUnavailable = errors.New("broker unavailable")

// Validator validates tokens through one remote broker. It is safe for
// concurrent use and starts no goroutine of its own.
type Validator struct {
	endpoint string // <URL>/v1/token/validate
	timeout  time.Duration
	client   *http.Client
	cache    *cache // nil: CacheTTL 0
	group    singleflight.Group
	obs      Observer
	log      *slog.Logger
	failing  atomic.Bool // last call failed: log transitions, not every failure
	now      func() time.Time
}

// New checks o and builds the Validator: its HTTP client and caches. It
// does not contact the broker, which may not be listening yet.
func New(o Options) (*Validator, error) {
	endpoint, err := o.check()
	if err != nil {
		return nil, fmt.Errorf("remote: %w", err)
	}
	v := &Validator{endpoint: endpoint, timeout: o.Timeout, obs: o.Observer, log: o.Logger, now: o.Now}
	if v.timeout == 0 {
		v.timeout = DefaultTimeout
	}
	size := o.CacheSize
	if size == 0 {
		size = DefaultCacheSize
	}
	if v.obs == nil {
		v.obs = nopObserver{}
	}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	if v.now == nil {
		v.now = time.Now
	}
	v.client = newHTTPClient(v.timeout, o.TLS.Clone())
	v.cache = newCache(&o, size, v.obs)
	return v, nil
}

// Close releases idle connections and the caches. Nothing else was
// started, so nothing else needs stopping.
func (v *Validator) Close() {
	v.client.CloseIdleConnections()
	if v.cache != nil {
		v.cache.purge()
	}
}

// Validate returns the claims of tok as the broker confirmed them. A
// definitive refusal (the broker's "valid":false, or a token refused
// locally as malformed or expired) wraps broker.ErrInvalidToken; no
// usable answer wraps ErrUnavailable, as does ctx ending while waiting for
// a call shared with others (which goes on for them).
//
// A cache hit costs a SHA-256 and an LRU lookup, without parsing the
// token: a cached answer implies the local checks passed before, and its
// deadlines never pass the token's exp. A miss runs the local checks
// before anything is asked of the broker.
func (v *Validator) Validate(ctx context.Context, tok string) (*broker.Claims, error) {
	if v.cache == nil { // CacheTTL 0: every validation asks, alone
		sent, err := precheck(tok, v.now())
		if err != nil {
			return nil, err
		}
		return v.call(ctx, tok, sent)
	}
	if len(tok) > broker.MaxTokenLength {
		return nil, errTooLong
	}
	key := broker.TokenHash(tok)
	c, stale, ok := v.cache.lookup(key, v.now(), false)
	if ok {
		v.obs.CacheHit()
		if c == nil {
			return nil, errBrokerSaysNo
		}
		return c, nil
	}
	return v.miss(ctx, tok, key, stale)
}

// miss validates an uncached token: local checks, then one call to the
// broker shared by every concurrent miss of the same token. (Apart from
// Validate so that key, captured by the shared call, escapes to the heap
// only on a miss.)
func (v *Validator) miss(ctx context.Context, tok string, key [32]byte, stale *entry) (*broker.Claims, error) {
	sent, err := precheck(tok, v.now())
	if err != nil {
		return nil, err
	}
	v.obs.CacheMiss()
	ch := v.group.DoChan(string(key[:]), func() (any, error) {
		// A validation that missed just before another's answer was
		// cached must not call again.
		if c, _, ok := v.cache.lookup(key, v.now(), true); ok {
			if c == nil {
				return nil, errBrokerSaysNo
			}
			return c, nil
		}
		c, err := v.call(context.WithoutCancel(ctx), tok, sent)
		v.cache.store(key, c, err, v.now())
		return c, err
	})
	var res singleflight.Result
	select {
	case res = <-ch:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
	}
	if res.Err == nil {
		return res.Val.(*broker.Claims), nil
	}
	if errors.Is(res.Err, ErrUnavailable) && stale != nil && stale.servesStale(v.now()) {
		v.obs.StaleHit()
		return stale.claims, nil
	}
	return nil, res.Err
}

// call asks the broker once, observes the outcome and logs when failure
// starts or ends. It returns the claims, an error wrapping
// broker.ErrInvalidToken for a definitive no (errBrokerSaysNo for a
// well-formed "valid":false), or an error wrapping ErrUnavailable.
func (v *Validator) call(ctx context.Context, tok string, sent *broker.Claims) (*broker.Claims, error) {
	start := time.Now()
	c, err := v.roundTrip(ctx, tok, sent)
	outcome := OutcomeValid
	switch {
	case err == nil:
	case errors.Is(err, broker.ErrInvalidToken):
		outcome = OutcomeInvalid
	case timedOut(err):
		outcome = OutcomeTimeout
	default:
		outcome = OutcomeError
	}
	v.obs.Call(outcome, time.Since(start))
	if outcome >= OutcomeError {
		if !v.failing.Swap(true) {
			v.log.Warn("remote broker validation failing; tokens without a usable cached answer are unavailable",
				"broker", v.endpoint, "error", err)
		}
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if v.failing.Swap(false) {
		v.log.Info("remote broker validation recovered", "broker", v.endpoint)
	}
	return c, err
}
