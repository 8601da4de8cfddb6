package remote

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"
)

// Defaults for Options. New applies DefaultTimeout and DefaultCacheSize
// when those are zero; CacheTTL and NegativeCacheTTL have no such
// fallback, since zero turns them off, so a caller that wants the default
// sets it.
const (
	// DefaultCacheTTL bounds how long a "valid" answer is reused, and so
	// how late a revocation is seen.
	DefaultCacheTTL = 30 * time.Second
	// DefaultCacheSize bounds the number of cached "valid" answers (plus a
	// quarter as many "invalid" ones); about 100 MB at worst with typical
	// claims.
	DefaultCacheSize = 100000
	// DefaultNegativeCacheTTL is how long a "valid":false answer is
	// reused, so a client replaying a dead token costs the broker little.
	DefaultNegativeCacheTTL = 5 * time.Second
	// DefaultTimeout bounds one call to the broker, connect to last byte.
	DefaultTimeout = 2 * time.Second
)

// MaxConns bounds the connections a Validator opens to its broker.
const MaxConns = 64

// validatePath is appended to the broker URL's path.
const validatePath = "/v1/token/validate"

// Options configure a Validator. Every field but URL may be left zero:
// that means DefaultCacheSize and DefaultTimeout for CacheSize and
// Timeout, but "off" for CacheTTL, NegativeCacheTTL and StaleIfError (a
// caller that wants DefaultCacheTTL sets it).
type Options struct {
	// URL is the broker's base URL: http or https, with a host, without
	// user info, query or fragment. A path prefix is kept:
	// "https://b.example/aw" validates at
	// https://b.example/aw/v1/token/validate. Required.
	URL string
	// CacheTTL is how long a "valid" answer is reused: the upper bound on
	// how late a revocation is seen. An entry never outlives the token's
	// exp. 0 turns caching off entirely: every Validate asks the broker,
	// concurrent calls for one token are not coalesced, and no answer,
	// positive or negative, is kept.
	CacheTTL time.Duration
	// CacheSize bounds the number of cached "valid" answers. "valid":false
	// answers are kept apart, in a quarter as many entries, so junk
	// cannot evict valid tokens. 0 means DefaultCacheSize.
	CacheSize int
	// NegativeCacheTTL is how long a "valid":false answer is reused; 0
	// caches no negative answer.
	NegativeCacheTTL time.Duration
	// Timeout bounds one call to the broker, connecting included. 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// StaleIfError lets a cached "valid" answer be served up to this long
	// past CacheTTL while the broker is unreachable, times out, answers
	// 5xx or something malformed; never past the token's exp, never after
	// a "valid":false. 0: fail closed (ErrUnavailable) at once.
	StaleIfError time.Duration
	// TLS configures connections to an https broker: its roots, a client
	// certificate. It is cloned. nil uses the system roots and presents no
	// certificate; non-nil requires an https URL.
	TLS *tls.Config
	// Logger receives a warning when calls to the broker start failing and
	// a note when they recover (transitions, not every failure). nil logs
	// nothing.
	Logger *slog.Logger
	// Observer counts cache and call events; nil counts nothing.
	Observer Observer
	// Now is the clock for token expiry and cache deadlines; nil is
	// time.Now.
	Now func() time.Time
}

// check validates o and returns the validate endpoint's URL. It does not
// touch the network.
func (o *Options) check() (string, error) {
	endpoint, err := endpointOf(o.URL)
	if err != nil {
		return "", err
	}
	for _, d := range [...]struct {
		name string
		v    time.Duration
	}{
		{"CacheTTL", o.CacheTTL}, {"NegativeCacheTTL", o.NegativeCacheTTL},
		{"Timeout", o.Timeout}, {"StaleIfError", o.StaleIfError},
	} {
		if d.v < 0 {
			return "", fmt.Errorf("%s must not be negative (got %s)", d.name, d.v)
		}
	}
	if o.CacheSize < 0 {
		return "", fmt.Errorf("CacheSize must not be negative (got %d); CacheTTL 0 turns caching off", o.CacheSize)
	}
	if o.TLS != nil && !strings.HasPrefix(endpoint, "https:") {
		return "", fmt.Errorf("broker url %q: TLS settings need an https URL", o.URL)
	}
	return endpoint, nil
}

// endpointOf checks the broker's base URL and returns its validate URL.
func endpointOf(raw string) (string, error) {
	if raw == "" {
		return "", errors.New("broker url is required")
	}
	if !strings.Contains(raw, "://") {
		return "", fmt.Errorf("broker url %q: must start with http:// or https://", raw)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("broker url %q: %v", raw, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("broker url %q: scheme must be http or https", raw)
	case u.Host == "" || u.Hostname() == "":
		return "", fmt.Errorf("broker url %q: no host", raw)
	case u.User != nil:
		return "", fmt.Errorf("broker url %q: credentials in the URL are not supported (use a TLS client certificate)", raw)
	case u.RawQuery != "" || u.ForceQuery:
		return "", fmt.Errorf("broker url %q: must not have a query", raw)
	case u.Fragment != "":
		return "", fmt.Errorf("broker url %q: must not have a fragment", raw)
	}
	if p := u.Port(); p != "" {
		if _, err := net.LookupPort("tcp", p); err != nil {
			return "", fmt.Errorf("broker url %q: bad port", raw)
		}
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + validatePath
	u.RawPath = ""
	return u.String(), nil
}
