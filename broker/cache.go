package broker

import "sync"

// claimsCache remembers the claims of tokens whose signature has been
// verified, so a token seen again costs a map lookup instead of an Ed25519
// verification. It is keyed by the whole token string (an exact match, never
// a hash that could collide), entries never outlive the token's exp, and its
// size is bounded: when full, expired entries go first, then an arbitrary
// tenth of the rest.
type claimsCache struct {
	mu      sync.RWMutex
	max     int
	entries map[string]*Claims
}

func newClaimsCache(max int) *claimsCache {
	return &claimsCache{max: max, entries: make(map[string]*Claims)}
}

// get returns the cached claims of tok, or nil. It does not allocate.
func (c *claimsCache) get(tok string, now int64) *Claims {
	if c.max <= 0 {
		return nil
	}
	c.mu.RLock()
	cl := c.entries[tok]
	c.mu.RUnlock()
	if cl == nil || now > cl.Exp {
		return nil
	}
	return cl
}

func (c *claimsCache) put(tok string, cl *Claims, now int64) {
	if c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		c.evictLocked(now)
	}
	c.entries[tok] = cl
}

// evictLocked frees at least a tenth of the cache. Map iteration order is
// random, which makes the arbitrary choice fair enough.
func (c *claimsCache) evictLocked(now int64) {
	for k, v := range c.entries {
		if now > v.Exp {
			delete(c.entries, k)
		}
	}
	target := c.max - c.max/10 - 1
	for k := range c.entries {
		if len(c.entries) <= target {
			break
		}
		delete(c.entries, k)
	}
}

// len reports the number of cached entries.
func (c *claimsCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}
