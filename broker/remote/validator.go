// Package remote validates AgentWrit tokens for a gateway whose broker
// runs elsewhere: the upstream broker, or another Caddy serving this
// project's broker.
//
// In validate mode (the default, and all an upstream broker supports)
// every token without a fresh cached answer is sent to the broker's POST
// /v1/token/validate. Answers are cached in a bounded LRU keyed by the
// token's SHA-256, for at most Options.CacheTTL and never past the
// token's exp; concurrent validations of one uncached token share one
// call. Garbage is refused locally, and, when the broker publishes its
// keys (this project's broker does), so is a token whose signature does
// not verify. Calls are bounded per client and in all, and stop for a
// while when the broker keeps failing. A "valid" answer is taken only
// with the token's own claims.
//
// In local mode nothing is asked on the request path: tokens are verified
// with the broker's keys (broker.Verifier, as the embedded broker does)
// and checked against a copy of its revocations that its revocation feed
// keeps current. When the feed has been silent past Options.MaxStaleness,
// or has not delivered its first heartbeat yet, tokens are refused (or,
// with Options.Fallback, validated as in validate mode).
//
// When no decision can be had the result is ErrUnavailable, never an
// allow: the caller fails closed. The package knows nothing of Caddy; its
// events reach the embedder's metrics through Observer and its log lines
// through a *slog.Logger.
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
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// ErrUnavailable means the token could not be checked at all: the broker
// is unreachable, timed out, answered a status other than 200 or a
// malformed body, its calls are suspended or this client's are bounded,
// or (local mode) the revocation feed is stale or missing. A gateway
// answers 503 and lets nothing through. A definitive "no" is not
// ErrUnavailable: it wraps broker.ErrInvalidToken.
var ErrUnavailable = errors.New("broker unavailable")

// Validator validates tokens through one remote broker. It is safe for
// concurrent use. In validate mode it starts no goroutine; in local mode
// it shares its broker's follower (see New), which Close leaves.
type Validator struct {
	endpoint string // <URL>/v1/token/validate, for logs
	timeout  time.Duration
	http     *http.Client // bounded: MaxConns, every phase under timeout
	api      *client.Client
	offPath  *http.Client   // for API: bounded by LoginTimeout
	apiOff   *client.Client // API's client, over offPath
	cache    *cache         // nil: CacheTTL 0
	group    singleflight.Group
	gate     *gate
	keys     *keyring // the broker's keys: this Validator's (validate mode) or the follower's
	local    *local   // nil in validate mode
	fallback bool
	clientIP func(context.Context) string
	obs      Observer
	health   HealthObserver
	log      *slog.Logger
	failing  atomic.Bool // last call failed: log transitions, not every failure
	// foreignLogged is when a foreign answer was last logged (Unix nanos).
	foreignLogged atomic.Int64
	now           func() time.Time
}

// New checks o and builds the Validator. It never contacts the broker
// itself, which may not be listening yet (it may sit behind the very
// server being configured). In local mode it joins, or starts, the
// follower of o's broker and credentials, which logs in, fetches the keys
// and follows the feed from its own goroutines; until the first heartbeat
// arrives (about two seconds after the stream opens) Validate fails with
// ErrUnavailable.
func New(o Options) (*Validator, error) {
	endpoint, err := o.check()
	if err != nil {
		return nil, fmt.Errorf("remote: %w", err)
	}
	v := &Validator{endpoint: endpoint, timeout: o.Timeout, obs: o.Observer, log: o.Logger, now: o.Now,
		fallback: o.Fallback, clientIP: o.ClientIP}
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
	v.health, _ = v.obs.(HealthObserver)
	if v.health == nil {
		v.health = nopObserver{}
	}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.clientIP == nil {
		v.clientIP = clientIPOf
	}
	if plainRemote(endpoint) {
		v.log.Warn("remote broker URL is plain http to a host that is not this machine: tokens and answers cross the network unencrypted, and anyone in between can forge answers; use https",
			"broker", o.URL)
	}
	v.http = newHTTPClient(v.timeout, o.TLS.Clone())
	if v.api, err = client.New(o.URL, client.WithHTTPClient(v.http)); err != nil {
		return nil, fmt.Errorf("remote: %w", err)
	}
	v.offPath = newOffPathHTTPClient(v.timeout, o.TLS.Clone())
	if v.apiOff, err = client.New(o.URL, client.WithHTTPClient(v.offPath)); err != nil {
		return nil, fmt.Errorf("remote: %w", err)
	}
	v.cache = newCache(&o, size, v.obs)
	v.gate = newGate(&o, v.timeout)
	if o.Mode == ModeLocal {
		f, err := joinFollower(v, &o)
		if err != nil {
			return nil, fmt.Errorf("remote: %w", err)
		}
		v.local = newLocal(v, f, o.MaxStaleness)
		v.keys = f.keys
		return v, nil
	}
	v.keys = newKeyring(v.fetchKeys, v.now, -1, func(err error) { v.health.KeysRefreshed(err == nil) })
	return v, nil
}

// fetchKeys is validate mode's fetch of the broker's JWKS.
func (v *Validator) fetchKeys(ctx context.Context) (*broker.JWKSet, error) {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	return v.api.JWKS(ctx)
}

// Close releases idle connections and the caches, and leaves the
// follower (the last Validator to leave it stops it and waits for its
// goroutines).
func (v *Validator) Close() {
	if v.local != nil {
		v.local.f.leave(v)
	}
	v.http.CloseIdleConnections()
	v.offPath.CloseIdleConnections()
	if v.cache != nil {
		v.cache.purge()
	}
}

// Validate returns the claims of tok, verified locally (local mode) or as
// the broker confirmed them. A definitive refusal (a bad signature, a
// revocation, the broker's "valid":false, a token refused locally as
// malformed or expired) wraps broker.ErrInvalidToken; a revoked token's
// claims come back with broker.ErrRevoked, for the log. No decision wraps
// ErrUnavailable, as does ctx ending while waiting for a call shared with
// others (which goes on for them).
//
// In local mode a token seen before costs a hash, a map lookup and the
// revocation check, and allocates nothing. In validate mode a cache hit
// costs a SHA-256 and an LRU lookup, without parsing the token: a cached
// answer implies the local checks passed before, and its deadlines never
// pass the token's exp. A miss runs the local checks before anything is
// asked of the broker.
func (v *Validator) Validate(ctx context.Context, tok string) (*broker.Claims, error) {
	if l := v.local; l != nil {
		err := l.ready()
		if err == nil {
			return l.validate(ctx, tok)
		}
		if !v.fallback || errors.Is(err, errNoFeed) {
			return nil, err
		}
	}
	if v.cache == nil { // CacheTTL 0: every validation asks, alone
		sent, err := v.localChecks(ctx, tok)
		if err != nil {
			return nil, err
		}
		return v.call(ctx, v.clientIP(ctx), tok, sent)
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
	ip := v.clientIP(ctx)
	ch := v.group.DoChan(string(key[:]), func() (any, error) {
		// A validation that missed just before another's answer was
		// cached must not call again.
		if c, _, ok := v.cache.lookup(key, v.now(), true); ok {
			if c == nil {
				return nil, errBrokerSaysNo
			}
			return c, nil
		}
		ctx := context.WithoutCancel(ctx)
		if err := v.checkSignature(ctx, tok); err != nil {
			return nil, err
		}
		c, err := v.call(ctx, ip, tok, sent)
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

// localChecks are what a token passes before a call: the pre-checks, then
// its signature.
func (v *Validator) localChecks(ctx context.Context, tok string) (*broker.Claims, error) {
	sent, err := precheck(tok, v.now())
	if err != nil {
		return nil, err
	}
	return sent, v.checkSignature(ctx, tok)
}

// checkSignature verifies tok with the broker's keys, when it publishes
// them, so that a forged token costs no call. It refuses only what the
// keys decide: with no keys, or a kid the key set could not be refreshed
// for, the broker decides.
func (v *Validator) checkSignature(ctx context.Context, tok string) error {
	if v.local == nil && !v.keys.usable(ctx) {
		return nil
	}
	if _, err := v.keys.verify(ctx, tok); err != nil && !errors.Is(err, ErrUnavailable) {
		return err
	}
	return nil
}

// API is a client of the validator's broker with the validator's TLS
// settings, for the gateway's other calls to that broker, off the request
// path, such as usage reports and the app login they need: their answers
// are bounded by LoginTimeout, not Timeout (see LoginTimeout).
func (v *Validator) API() *client.Client { return v.apiOff }
