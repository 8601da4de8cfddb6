package remote

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
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
	// DefaultMaxStaleness is how long local mode keeps accepting tokens
	// after the feed's last heartbeat. The broker sends one every
	// broker.FeedHeartbeat (2s), and a stream that is replaced (the
	// broker's configuration reloads, the app token is renewed) delivers
	// its first heartbeat 2s after it opens: 5s rides out one such
	// replacement without refusing anything, and bounds how long a
	// revocation can go unseen when the feed silently breaks.
	DefaultMaxStaleness = 5 * time.Second
	// DefaultClientCallRate is how many calls for uncached tokens one
	// client may cause per second, with bursts of twice as many: room for
	// an orchestrator re-validating a thousand agents' tokens every
	// CacheTTL, but a flood of junk from one address costs the broker at
	// most this.
	DefaultClientCallRate = 50
)

// MaxConns bounds the connections a Validator opens to its broker for
// validate calls, and so the calls in flight at once.
const MaxConns = 64

// MaxCallsPerClient bounds the calls in flight for one client, so that no
// client can hold more than an eighth of MaxConns.
const MaxCallsPerClient = MaxConns / 8

// KeysRefresh is how often local mode fetches the broker's JWKS even when
// nothing announced a change, so that retired keys drop out.
const KeysRefresh = time.Minute

// Mode is how a Validator checks a token.
type Mode uint8

// The modes.
const (
	// ModeValidate asks the broker (POST /v1/token/validate) about every
	// token it holds no fresh cached answer for: what an upstream
	// AgentWrit broker supports. The default.
	ModeValidate Mode = iota
	// ModeLocal verifies tokens with the broker's published keys
	// (/.well-known/jwks.json) and checks them against a copy of its
	// revocations kept current by its revocation feed (GET
	// /v1/revocations): nothing is asked on the request path. It needs
	// this project's broker and an app's credentials whose scope ceiling
	// holds broker.FeedScope.
	ModeLocal
)

// String returns "validate" or "local".
func (m Mode) String() string {
	if m == ModeLocal {
		return "local"
	}
	return "validate"
}

// validatePath is appended to the broker URL's path.
const validatePath = "/v1/token/validate"

// Options configure a Validator. Every field but URL (and, in local mode,
// the app's credentials) may be left zero: that means DefaultCacheSize,
// DefaultTimeout, DefaultMaxStaleness and DefaultClientCallRate for
// CacheSize, Timeout, MaxStaleness and ClientCallRate, but "off" for
// CacheTTL, NegativeCacheTTL and StaleIfError (a caller that wants
// DefaultCacheTTL sets it).
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
	// DefaultTimeout. App logins and the other calls off the request path
	// wait for their answer up to LoginTimeout if that is longer.
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
	// Observer counts cache and call events, and, if it implements
	// HealthObserver, the events of the link to the broker; nil counts
	// nothing.
	Observer Observer
	// Now is the clock for token expiry and cache deadlines; nil is
	// time.Now.
	Now func() time.Time

	// Mode is ModeValidate (the zero value) or ModeLocal.
	Mode Mode
	// ClientID and ClientSecret are the credentials of the app whose
	// token reads the revocation feed (ModeLocal only, where they are
	// required). The secret is never logged nor put in an error.
	ClientID, ClientSecret string
	// MaxStaleness is, in ModeLocal, how long after the feed's last
	// heartbeat tokens are still accepted; past it Validate fails with
	// ErrUnavailable (or, with Fallback, asks the broker). It must exceed
	// broker.FeedHeartbeat; 0 means DefaultMaxStaleness.
	MaxStaleness time.Duration
	// Fallback makes ModeLocal validate through the broker, as ModeValidate
	// does (with its cache and bounds), while the feed is stale or not yet
	// synchronized, instead of failing with ErrUnavailable. A broker
	// without a feed is never fallen back on: that is a configuration to
	// fix.
	Fallback bool
	// ClientCallRate bounds the calls for uncached tokens that one client
	// (see ClientIP) may cause: this many per second, in bursts of twice
	// as many, and at most MaxCallsPerClient at a time. 0 means
	// DefaultClientCallRate; a negative value turns the per-client bound
	// off (behind a proxy that hides client addresses, every request would
	// be one client).
	ClientCallRate int
	// ClientIP returns the address of the client a validation is made
	// for, from its context: the per-client bound's key. nil reads what
	// WithClientIP stored. It is called only when a call may be needed. A
	// validation without an address is not bounded per client.
	ClientIP func(ctx context.Context) string
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
		return "", fmt.Errorf("broker url %q: TLS settings need an https URL", RedactURL(o.URL))
	}
	if err := o.checkMode(); err != nil {
		return "", err
	}
	return endpoint, nil
}

// checkMode checks the options that belong to one mode.
func (o *Options) checkMode() error {
	switch o.Mode {
	case ModeValidate:
		if o.ClientID != "" || o.ClientSecret != "" || o.MaxStaleness != 0 || o.Fallback {
			return errors.New("ClientID, ClientSecret, MaxStaleness and Fallback apply only to local mode")
		}
	case ModeLocal:
		switch {
		case o.ClientID == "" || o.ClientSecret == "":
			return fmt.Errorf("local mode needs an app's ClientID and ClientSecret (its scope ceiling must hold %s)", broker.FeedScope)
		case o.MaxStaleness < 0:
			return fmt.Errorf("MaxStaleness must not be negative (got %s)", o.MaxStaleness)
		case o.MaxStaleness != 0 && o.MaxStaleness <= broker.FeedHeartbeat:
			return fmt.Errorf("MaxStaleness must exceed the feed's heartbeat interval, %s (got %s)", broker.FeedHeartbeat, o.MaxStaleness)
		}
	default:
		return fmt.Errorf("unknown Mode %d", o.Mode)
	}
	return nil
}

// plainRemote reports whether the validate URL is plain http to a host
// that is not this machine: answers that cross a network unauthenticated.
func plainRemote(endpoint string) bool {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "http" {
		return false
	}
	host := u.Hostname()
	if strings.EqualFold(host, "localhost") {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err != nil || !ip.IsLoopback()
}

// endpointOf checks the broker's base URL and returns its validate URL.
// Its errors show the URL as RedactURL does: credentials in it are one of
// the mistakes they report.
func endpointOf(raw string) (string, error) {
	if raw == "" {
		return "", errors.New("broker url is required")
	}
	shown := RedactURL(raw)
	if !strings.Contains(raw, "://") {
		return "", fmt.Errorf("broker url %q: must start with http:// or https://", shown)
	}
	u, err := url.Parse(raw)
	if err != nil {
		// Not url.Parse's words: they quote the part that is wrong, which
		// may be a password (https://user:password/ lacks its host).
		return "", fmt.Errorf("broker url %q: does not parse as a URL", shown)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("broker url %q: scheme must be http or https", shown)
	case u.Host == "" || u.Hostname() == "":
		return "", fmt.Errorf("broker url %q: no host", shown)
	case u.User != nil:
		return "", fmt.Errorf("broker url %q: credentials in the URL are not supported (use a TLS client certificate)", shown)
	case u.RawQuery != "" || u.ForceQuery:
		return "", fmt.Errorf("broker url %q: must not have a query", shown)
	case u.Fragment != "":
		return "", fmt.Errorf("broker url %q: must not have a fragment", shown)
	case strings.HasSuffix(strings.TrimSuffix(u.Path, "/"), "/v1"):
		return "", fmt.Errorf("broker url %q: must not end in /v1 (give the base URL the API is served under)", shown)
	}
	if p := u.Port(); p != "" {
		if _, err := net.LookupPort("tcp", p); err != nil {
			return "", fmt.Errorf("broker url %q: bad port", shown)
		}
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + validatePath
	u.RawPath = ""
	return u.String(), nil
}

// RedactURL is raw as messages and logs may show it: user info (a
// password, or a token used as the user name) and the query's values
// replaced with xxxxx, and an unparsable URL not shown at all, since it
// may be anything.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	if u.User != nil {
		u.User = url.User("xxxxx")
	}
	if u.RawQuery != "" {
		q := u.Query()
		for k := range q {
			q[k] = []string{"xxxxx"}
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}
