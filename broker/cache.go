package broker

import (
	"crypto/sha256"
	"encoding/json"
	"sync"
	"sync/atomic"
)

// claimsCache remembers the claims of tokens whose signature has been
// verified, so a token seen again costs a hash and a map lookup instead of
// an Ed25519 verification. It is keyed by the SHA-256 of the whole token: a
// collision-resistant digest, never a part of the token, and 32 bytes
// instead of the token's 500 or more, which halves what a cached token
// costs in memory. Entries never outlive the token's exp, and its size is
// bounded: when full, expired entries go first, then an arbitrary tenth of
// the rest.
type claimsCache struct {
	mu      sync.RWMutex
	max     int
	entries map[tokenKey]*cacheEntry
}

// tokenKey is the SHA-256 of a whole token.
type tokenKey [sha256.Size]byte

// stackKeyMax is the longest token TokenHash hashes without allocating.
const stackKeyMax = 2048

// TokenHash is the SHA-256 of the whole token tok, the key under which
// caches of validated tokens hold it (this package's and package
// remote's). It does not allocate for tokens of up to 2 KiB, which is
// why it is preferred over sha256.Sum256([]byte(tok)) on hot paths.
func TokenHash(tok string) [sha256.Size]byte {
	var buf [stackKeyMax]byte
	if len(tok) <= len(buf) {
		return sha256.Sum256(buf[:copy(buf[:], tok)])
	}
	return sha256.Sum256([]byte(tok))
}

// keyOf is TokenHash as this cache's key type.
func keyOf(tok string) tokenKey { return TokenHash(tok) }

// cacheEntry is one verified token: its claims and, once /v1/token/validate
// has asked for it, the encoded validate response.
type cacheEntry struct {
	claims *Claims
	body   atomic.Pointer[[]byte]
}

// validBody returns `{"valid":true,"claims":…}` plus a newline, encoding it
// on first use. Concurrent first uses may both encode; the results are equal.
func (e *cacheEntry) validBody() ([]byte, error) {
	if p := e.body.Load(); p != nil {
		return *p, nil
	}
	cj, err := json.Marshal(e.claims) // HTML-escaped, as json.Encoder
	if err != nil {
		return nil, err
	}
	const head = `{"valid":true,"claims":`
	body := make([]byte, 0, len(head)+len(cj)+2)
	body = append(append(append(body, head...), cj...), '}', '\n')
	e.body.Store(&body)
	return body, nil
}

func newClaimsCache(max int) *claimsCache {
	return &claimsCache{max: max, entries: make(map[tokenKey]*cacheEntry)}
}

// get returns the cached entry of the token with key k, or nil. It does not
// allocate.
func (c *claimsCache) get(k tokenKey, now int64) *cacheEntry {
	if c.max <= 0 {
		return nil
	}
	c.mu.RLock()
	e := c.entries[k]
	c.mu.RUnlock()
	if e == nil || now > e.claims.Exp {
		return nil
	}
	return e
}

// put caches cl under k and returns its entry. With the cache disabled
// the entry is returned but not kept.
func (c *claimsCache) put(k tokenKey, cl *Claims, now int64) *cacheEntry {
	e := &cacheEntry{claims: cl}
	if c.max <= 0 {
		return e
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.entries[k]; old != nil && now <= old.claims.Exp {
		return old // a concurrent first sight won; keep its encoded body
	}
	if len(c.entries) >= c.max {
		c.evictLocked(now)
	}
	c.entries[k] = e
	return e
}

// evictLocked frees at least a tenth of the cache. Map iteration order is
// random, which makes the arbitrary choice fair enough.
func (c *claimsCache) evictLocked(now int64) {
	for k, v := range c.entries {
		if now > v.claims.Exp {
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
