package remote

import (
	"errors"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// negativeShare: the negative cache holds CacheSize/negativeShare entries.
const negativeShare = 4

// entry is one cached "valid" answer. Times are Unix nanoseconds.
type entry struct {
	claims *broker.Claims
	fresh  int64 // answer reusable until then
	stale  int64 // usable under StaleIfError until then (≤ exp)
}

// servesStale reports whether e may still be served, at now, while the
// broker fails.
func (e *entry) servesStale(now time.Time) bool {
	return now.UnixNano() < e.stale && now.Unix() < e.claims.Exp
}

// cache holds the broker's answers, keyed by the token's SHA-256.
//
// Both LRUs are expirable.LRU created without a TTL: with a TTL it starts
// a cleanup goroutine that golang-lru v2.0.7 offers no way to stop (its
// Close is commented out), and which keeps the whole cache reachable, so
// every Validator (one per Caddy config reload) would leak one goroutine
// and its cache. Instead each entry carries its own deadlines, checked on
// every read (which we must do anyway: the TTL is per entry,
// min(CacheTTL, exp − now)); expired entries are replaced on the next miss
// or pushed out by LRU pressure, so memory stays bounded by CacheSize and
// nothing runs in the background.
type cache struct {
	positive *lru[*entry]
	// negative holds "valid":false answers (value: fresh until, Unix
	// nanos) apart from positive, so a flood of junk tokens, each refused
	// once, cannot push the valid tokens out. nil: no negative caching.
	negative *lru[int64]

	size                           int // bound on positive
	ttl, negativeTTL, staleIfError time.Duration
	obs                            Observer
}

type lru[V any] = expirable.LRU[[32]byte, V]

// newCache returns nil when o.CacheTTL is 0: no caching at all.
func newCache(o *Options, size int, obs Observer) *cache {
	if o.CacheTTL == 0 {
		return nil
	}
	c := &cache{
		positive: expirable.NewLRU[[32]byte, *entry](size, nil, 0),
		size:     size, ttl: o.CacheTTL, negativeTTL: o.NegativeCacheTTL, staleIfError: o.StaleIfError,
		obs: obs,
	}
	if o.NegativeCacheTTL > 0 {
		c.negative = expirable.NewLRU[[32]byte, int64](max(1, size/negativeShare), nil, 0)
	}
	return c
}

// lookup returns a fresh cached answer for key: claims, or nil claims for
// a fresh negative one. ok is false when there is none; stale is a
// positive entry past fresh that StaleIfError may still serve. peek reads
// without touching recency.
func (c *cache) lookup(key [32]byte, now time.Time, peek bool) (claims *broker.Claims, stale *entry, ok bool) {
	t := now.UnixNano()
	get := c.positive.Get
	if peek {
		get = c.positive.Peek
	}
	if e, found := get(key); found {
		if t < e.fresh {
			return e.claims, nil, true
		}
		if t < e.stale {
			stale = e
		}
	}
	if c.negative != nil {
		getNeg := c.negative.Get
		if peek {
			getNeg = c.negative.Peek
		}
		if fresh, found := getNeg(key); found && t < fresh {
			return nil, stale, true
		}
	}
	return nil, stale, false
}

// store caches a definitive answer: claims, or errBrokerSaysNo. Failures
// are not cached (and do not displace a stale positive entry).
func (c *cache) store(key [32]byte, claims *broker.Claims, err error, now time.Time) {
	switch {
	case errors.Is(err, errBrokerSaysNo):
		c.positive.Remove(key) // a stale "valid" of a now-revoked token
		if c.negative != nil && c.negative.Add(key, now.Add(c.negativeTTL).UnixNano()) {
			c.obs.CacheEviction()
		}
	case err == nil:
		exp := time.Unix(claims.Exp, 0)
		fresh := now.Add(c.ttl)
		if exp.Before(fresh) {
			fresh = exp
		}
		stale := fresh.Add(c.staleIfError)
		if exp.Before(stale) {
			stale = exp
		}
		if c.positive.Add(key, &entry{claims: claims, fresh: fresh.UnixNano(), stale: stale.UnixNano()}) {
			c.obs.CacheEviction()
		}
	}
}

// purge drops every entry.
func (c *cache) purge() {
	c.positive.Purge()
	if c.negative != nil {
		c.negative.Purge()
	}
}
