package remote

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// local is a local-mode Validator's view of its follower: the decision of
// the request path, made from memory.
type local struct {
	v        *Validator
	f        *follower
	maxStale int64       // nanoseconds
	stale    atomic.Bool // this Validator has reported the feed stale
}

func newLocal(v *Validator, f *follower, maxStale time.Duration) *local {
	if maxStale == 0 {
		maxStale = DefaultMaxStaleness
	}
	return &local{v: v, f: f, maxStale: int64(maxStale)}
}

// ready reports whether the feed is fresh: a heartbeat within the
// staleness bound. Otherwise it says why not (errNoFeed, errNotSynced,
// errStale), and logs a silence once.
func (l *local) ready() error {
	f := l.f
	beat := f.beat.Load()
	if beat != 0 && f.now().UnixNano()-beat <= l.maxStale {
		if l.stale.Load() && l.stale.Swap(false) {
			l.v.log.Info("revocation feed fresh again; tokens are verified locally", "broker", f.id.url)
		}
		return nil
	}
	switch {
	case f.noFeed.Load():
		return errNoFeed
	case beat == 0:
		return errNotSynced
	}
	if !l.stale.Swap(true) {
		l.v.health.FeedStale()
		l.v.log.Warn("revocation feed silent past the staleness bound: a revocation could go unseen, so tokens are refused (503), or validated through the broker with fallback, until it recovers",
			"broker", f.id.url, "silent_for", time.Duration(f.now().UnixNano()-beat).Round(time.Millisecond).String(),
			"max_staleness", time.Duration(l.maxStale).String(), "fallback_validate", l.v.fallback)
	}
	return errStale
}

// validate verifies tok with the broker's keys and checks it against the
// revocations: no call, no allocation for a token seen before.
func (l *local) validate(ctx context.Context, tok string) (*broker.Claims, error) {
	c, err := l.f.keys.verify(ctx, tok)
	if err != nil {
		return nil, err
	}
	if l.f.index.Revoked(c) {
		return c, broker.ErrRevoked
	}
	return c, nil
}
