package caddymodule

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/hashicorp/golang-lru/v2/expirable"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// Defaults of RemoteBroker. A zero (or absent) JSON value means the default,
// except for cache_ttl and negative_cache_ttl, where an explicit 0 turns
// that cache off.
const (
	// DefaultRemoteCacheTTL bounds how long a "valid" answer is reused,
	// and so the revocation lag of a remote gateway.
	DefaultRemoteCacheTTL = 30 * time.Second
	// DefaultRemoteCacheSize bounds the number of cached "valid" answers
	// (plus a quarter as many "invalid" ones); about 100 MB at worst with
	// typical claims.
	DefaultRemoteCacheSize = 100000
	// DefaultRemoteNegativeCacheTTL is how long a "valid":false answer is
	// reused, so a client replaying a dead token costs the broker little.
	DefaultRemoteNegativeCacheTTL = 5 * time.Second
	// DefaultRemoteTimeout bounds one validate call, connect to last byte.
	DefaultRemoteTimeout = 2 * time.Second
	// DefaultRemoteMaxConns bounds the connections to the broker (per host).
	DefaultRemoteMaxConns = 64

	// validatePath is appended to the broker URL's path.
	validatePath = "/v1/token/validate"
	// maxTokenBytes: a longer bearer token is rejected locally. The
	// broker's own request limit is 1 MiB; real tokens are a few hundred
	// bytes, delegated ones a few KiB.
	maxTokenBytes = 64 << 10
	// maxValidateResponse bounds how much of a validate answer is read.
	maxValidateResponse = 1 << 20
)

// RemoteBroker makes the enforcement handler validate tokens through an
// external AgentWrit broker's POST /v1/token/validate (the upstream broker,
// or another Caddy serving agentwrit_broker) instead of the embedded one.
// Answers are cached in a bounded LRU keyed by the token's SHA-256;
// concurrent requests for one uncached token share one call. The broker is
// never contacted while the configuration loads.
type RemoteBroker struct {
	// URL is the broker's base URL, http or https, without query or
	// fragment; a path prefix is kept ("https://b.example/aw" validates at
	// https://b.example/aw/v1/token/validate). Placeholders such as
	// {env.BROKER_URL} are expanded. Required.
	URL string `json:"url"`
	// CacheTTL is how long a "valid" answer is reused (default 30s): the
	// upper bound on how late a revocation is seen. An entry never outlives
	// the token's exp. 0 turns caching off entirely: every request asks
	// the broker, and concurrent requests are not coalesced.
	CacheTTL *caddy.Duration `json:"cache_ttl,omitempty"`
	// CacheSize bounds the number of cached "valid" answers (default
	// 100000). "valid":false answers are kept in a separate LRU of a
	// quarter of this size, so junk cannot evict valid tokens.
	CacheSize int `json:"cache_size,omitempty"`
	// NegativeCacheTTL is how long a "valid":false answer is reused
	// (default 5s); 0 caches no negative answers.
	NegativeCacheTTL *caddy.Duration `json:"negative_cache_ttl,omitempty"`
	// Timeout bounds one validate call, connecting included (default 2s).
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// StaleIfError lets a cached "valid" answer be served up to this long
	// past its cache TTL while the broker is unreachable, times out,
	// answers 5xx or something malformed — never past the token's exp,
	// never after a "valid":false. Default 0: fail closed (503) at once.
	StaleIfError caddy.Duration `json:"stale_if_error,omitempty"`
	// TLSCA is a PEM file of the CA certificate(s) that sign the broker's
	// server certificate. It replaces the system roots. https only.
	TLSCA string `json:"tls_ca,omitempty"`
	// TLSClientCert is a client certificate and key (PEM files) presented
	// to the broker (mutual TLS). https only.
	TLSClientCert *RemoteClientCert `json:"tls_client_cert,omitempty"`
}

// RemoteClientCert names PEM files of a client certificate and its key.
type RemoteClientCert struct {
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// remoteSettings are RemoteBroker's values, checked and defaulted.
type remoteSettings struct {
	endpoint                                     string
	cacheTTL, negativeTTL, timeout, staleIfError time.Duration
	cacheSize                                    int
	tls                                          *tls.Config
}

// settings checks every value and loads the TLS files. It does not touch
// the network.
func (rb *RemoteBroker) settings() (*remoteSettings, error) {
	repl := caddy.NewReplacer()
	s := &remoteSettings{
		cacheTTL: DefaultRemoteCacheTTL, negativeTTL: DefaultRemoteNegativeCacheTTL,
		timeout: DefaultRemoteTimeout, cacheSize: DefaultRemoteCacheSize,
	}
	raw := strings.TrimSpace(repl.ReplaceKnown(rb.URL, ""))
	if raw == "" {
		return nil, errors.New("broker url is required")
	}
	if !strings.Contains(raw, "://") {
		return nil, fmt.Errorf("broker url %q: must start with http:// or https://", raw)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("broker url %q: %v", raw, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("broker url %q: scheme must be http or https", raw)
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("broker url %q: no host", raw)
	case u.User != nil:
		return nil, fmt.Errorf("broker url %q: credentials in the URL are not supported (use tls_client_cert)", raw)
	case u.RawQuery != "" || u.ForceQuery:
		return nil, fmt.Errorf("broker url %q: must not have a query", raw)
	case u.Fragment != "":
		return nil, fmt.Errorf("broker url %q: must not have a fragment", raw)
	}
	if p := u.Port(); p != "" {
		if _, err := net.LookupPort("tcp", p); err != nil {
			return nil, fmt.Errorf("broker url %q: bad port", raw)
		}
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + validatePath
	u.RawPath = ""
	s.endpoint = u.String()

	durs := []struct {
		name string
		v    *caddy.Duration
		dst  *time.Duration
	}{
		{"cache_ttl", rb.CacheTTL, &s.cacheTTL},
		{"negative_cache_ttl", rb.NegativeCacheTTL, &s.negativeTTL},
		{"timeout", &rb.Timeout, &s.timeout},
		{"stale_if_error", &rb.StaleIfError, &s.staleIfError},
	}
	for _, d := range durs {
		if d.v == nil {
			continue
		}
		if *d.v < 0 {
			return nil, fmt.Errorf("broker %s must not be negative (got %s)", d.name, time.Duration(*d.v))
		}
		if *d.v > 0 || d.name == "cache_ttl" || d.name == "negative_cache_ttl" {
			*d.dst = time.Duration(*d.v)
		}
	}
	switch {
	case rb.CacheSize < 0:
		return nil, fmt.Errorf("broker cache_size must be positive (got %d); cache_ttl 0 turns caching off", rb.CacheSize)
	case rb.CacheSize > 0:
		s.cacheSize = rb.CacheSize
	}

	if rb.TLSCA == "" && rb.TLSClientCert == nil {
		return s, nil
	}
	if u.Scheme != "https" {
		return nil, fmt.Errorf("broker url %q: tls_ca and tls_client_cert need an https URL", raw)
	}
	s.tls = &tls.Config{MinVersion: tls.VersionTLS12}
	if rb.TLSCA != "" {
		file := repl.ReplaceKnown(rb.TLSCA, "")
		pem, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("broker tls_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("broker tls_ca %s: no PEM certificate found", file)
		}
		s.tls.RootCAs = pool
	}
	if cc := rb.TLSClientCert; cc != nil {
		if cc.Cert == "" || cc.Key == "" {
			return nil, errors.New("broker tls_client_cert needs both a certificate and a key file")
		}
		cert, err := tls.LoadX509KeyPair(repl.ReplaceKnown(cc.Cert, ""), repl.ReplaceKnown(cc.Key, ""))
		if err != nil {
			return nil, fmt.Errorf("broker tls_client_cert: %w", err)
		}
		s.tls.Certificates = []tls.Certificate{cert}
	}
	return s, nil
}

// remoteMetrics instrument the remote validator (registered per provision
// against Caddy's registry, shared by the handlers of one config).
type remoteMetrics struct {
	hits, misses, evictions, staleHits prometheus.Counter
	valid, invalid, failed, timedOut   prometheus.Counter
	latency                            prometheus.Observer
}

func newRemoteMetrics(reg prometheus.Registerer) (*remoteMetrics, error) {
	var errs []error
	counter := func(name, help string) prometheus.Counter {
		c, err := register[prometheus.Counter](reg, prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help}))
		errs = append(errs, err)
		return c
	}
	m := &remoteMetrics{
		hits:      counter("agentwrit_gateway_cache_hits_total", "Remote validations answered from the cache (positive or negative entries)."),
		misses:    counter("agentwrit_gateway_cache_misses_total", "Remote validations the cache could not answer."),
		evictions: counter("agentwrit_gateway_cache_evictions_total", "Cache entries dropped to stay within cache_size."),
		staleHits: counter("agentwrit_gateway_cache_stale_hits_total", "Expired positive entries served under stale_if_error while the broker failed."),
	}
	calls, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "agentwrit_gateway_remote_calls_total",
		Help: "Calls to the remote broker's /v1/token/validate, by outcome (valid, invalid, error, timeout).",
	}, []string{"outcome"}))
	errs = append(errs, err)
	m.valid, m.invalid = calls.WithLabelValues("valid"), calls.WithLabelValues("invalid")
	m.failed, m.timedOut = calls.WithLabelValues("error"), calls.WithLabelValues("timeout")
	hist, err := register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "agentwrit_gateway_remote_call_duration_seconds",
		Help:    "Latency of calls to the remote broker's /v1/token/validate.",
		Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
	}))
	errs = append(errs, err)
	m.latency = hist
	return m, errors.Join(errs...)
}

// cacheEntry is one cached "valid" answer. Times are Unix nanoseconds.
type cacheEntry struct {
	claims *broker.Claims
	fresh  int64 // answer reusable until then
	stale  int64 // usable under stale_if_error until then (≤ exp)
}

// remoteValidator validates through POST <broker>/v1/token/validate.
type remoteValidator struct {
	s      remoteSettings
	client *http.Client
	cache  *expirable.LRU[[32]byte, *cacheEntry] // "valid" answers; nil: cache_ttl 0
	// negative holds "valid":false answers (value: fresh until, Unix nanos)
	// apart from cache, so a flood of junk tokens, each refused once, cannot
	// push the valid tokens out. nil: no negative caching.
	negative *expirable.LRU[[32]byte, int64]
	group    singleflight.Group
	metrics  *remoteMetrics
	logger   *zap.Logger
	failing  atomic.Bool // last call failed: log transitions, not every failure
	now      func() time.Time
}

// newRemoteValidator builds the client and the cache. No network I/O.
//
// The cache is an expirable.LRU created without a TTL: with a TTL it starts
// a cleanup goroutine that golang-lru v2.0.7 offers no way to stop (its
// Close is commented out), and which keeps the whole cache reachable, so
// every config reload would leak one goroutine and its cache. Instead each
// entry carries its own deadlines, checked on every read (which we must do
// anyway: the TTL is per entry, min(cache_ttl, exp − now)); expired
// entries are replaced on the next miss or pushed out by LRU pressure, so
// memory stays bounded by cache_size and nothing runs in the background.
func (rb *RemoteBroker) newValidator(reg prometheus.Registerer, logger *zap.Logger) (*remoteValidator, error) {
	s, err := rb.settings()
	if err != nil {
		return nil, err
	}
	m, err := newRemoteMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	dialer := &net.Dialer{Timeout: s.timeout, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment, // as Go and Caddy's reverse_proxy do; loopback is never proxied
		DialContext:           dialer.DialContext,
		TLSClientConfig:       s.tls,
		TLSHandshakeTimeout:   s.timeout,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          DefaultRemoteMaxConns,
		MaxIdleConnsPerHost:   DefaultRemoteMaxConns,
		MaxConnsPerHost:       DefaultRemoteMaxConns,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: s.timeout,
	}
	v := &remoteValidator{
		s:       *s,
		client:  &http.Client{Transport: transport, Timeout: s.timeout, CheckRedirect: noRedirects},
		metrics: m,
		logger:  logger,
		now:     time.Now,
	}
	if s.cacheTTL > 0 {
		v.cache = expirable.NewLRU[[32]byte, *cacheEntry](s.cacheSize, nil, 0)
		if s.negativeTTL > 0 {
			v.negative = expirable.NewLRU[[32]byte, int64](max(1, s.cacheSize/negativeShare), nil, 0)
		}
	}
	return v, nil
}

// noRedirects: a redirect is not an answer; the 3xx counts as a failure.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// close releases idle connections and the cache. Nothing else was started.
func (v *remoteValidator) close() {
	v.client.CloseIdleConnections()
	if v.cache != nil {
		v.cache.Purge()
	}
	if v.negative != nil {
		v.negative.Purge()
	}
}

// negativeShare: the negative cache holds cache_size/negativeShare entries.
const negativeShare = 4

// cached returns a fresh cached answer for key: claims, or errBrokerSaysNo
// for a fresh negative one. ok is false when there is none; stale is a
// positive entry past fresh that stale_if_error may still serve. peek
// reads without touching recency.
func (v *remoteValidator) cached(key [32]byte, peek bool) (c *broker.Claims, stale *cacheEntry, ok bool) {
	now := v.now().UnixNano()
	get := v.cache.Get
	if peek {
		get = v.cache.Peek
	}
	if e, found := get(key); found {
		if now < e.fresh {
			return e.claims, nil, true
		}
		if now < e.stale {
			stale = e
		}
	}
	if v.negative != nil {
		getNeg := v.negative.Get
		if peek {
			getNeg = v.negative.Peek
		}
		if fresh, found := getNeg(key); found && now < fresh {
			return nil, stale, true
		}
	}
	return nil, stale, false
}

// localClaims are what the pre-check reads from the token's payload.
type localClaims struct {
	Sub string `json:"sub"`
	Jti string `json:"jti"`
	Exp *int64 `json:"exp"`
}

var (
	errNotJWT       = fmt.Errorf("%w: not a compact JWS", broker.ErrMalformedToken)
	errAlg          = fmt.Errorf("%w: alg is not EdDSA", broker.ErrMalformedToken)
	errNoExp        = fmt.Errorf("%w: no exp", broker.ErrMalformedToken)
	errBrokerSaysNo = fmt.Errorf("%w: rejected by the broker", broker.ErrInvalidToken)
)

// precheck rejects, without a network call, what the broker would reject
// anyway: not three base64url parts, alg other than EdDSA, a signature
// that is not 64 bytes, no exp or an exp that has passed.
func precheck(tok string, now time.Time) (localClaims, error) {
	var lc localClaims
	if len(tok) > maxTokenBytes {
		return lc, errNotJWT
	}
	h, rest, ok1 := strings.Cut(tok, ".")
	p, sig, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || h == "" || p == "" || strings.IndexByte(sig, '.') >= 0 {
		return lc, errNotJWT
	}
	if base64.RawURLEncoding.DecodedLen(len(sig)) != 64 {
		return lc, errNotJWT
	}
	var sigBuf [66]byte
	if n, err := base64.RawURLEncoding.Strict().Decode(sigBuf[:], []byte(sig)); err != nil || n != 64 {
		return lc, errNotJWT
	}
	hb, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		return lc, errNotJWT
	}
	var hdr struct {
		Alg string `json:"alg"`
	}
	if json.Unmarshal(hb, &hdr) != nil {
		return lc, errNotJWT
	}
	if hdr.Alg != "EdDSA" {
		return lc, errAlg
	}
	pb, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil {
		return lc, errNotJWT
	}
	if json.Unmarshal(pb, &lc) != nil {
		return lc, errNotJWT
	}
	if lc.Exp == nil {
		return lc, errNoExp
	}
	if now.Unix() >= *lc.Exp {
		return lc, broker.ErrExpired
	}
	return lc, nil
}

// validate implements validator. A cache hit costs a SHA-256 and an LRU
// lookup: a cached answer implies the pre-checks passed before, and its
// deadlines never pass the token's exp. A miss runs the pre-checks before
// anything is asked of the broker.
func (v *remoteValidator) validate(ctx context.Context, tok string) (*broker.Claims, error) {
	if v.cache == nil { // cache_ttl 0: every request asks, alone
		lc, err := precheck(tok, v.now())
		if err != nil {
			return nil, err
		}
		return v.call(ctx, tok, lc)
	}
	if len(tok) > maxTokenBytes {
		return nil, errNotJWT
	}
	key := sha256.Sum256([]byte(tok))
	c, stale, ok := v.cached(key, false)
	if ok {
		v.metrics.hits.Inc()
		if c == nil {
			return nil, errBrokerSaysNo
		}
		return c, nil
	}
	lc, err := precheck(tok, v.now())
	if err != nil {
		return nil, err
	}
	v.metrics.misses.Inc()
	ch := v.group.DoChan(string(key[:]), func() (any, error) {
		// A request that missed just before another's answer was cached
		// must not call again.
		if c, _, ok := v.cached(key, true); ok {
			if c == nil {
				return nil, errBrokerSaysNo
			}
			return c, nil
		}
		c, err := v.call(context.WithoutCancel(ctx), tok, lc)
		v.store(key, c, err)
		return c, err
	})
	var res singleflight.Result
	select {
	case res = <-ch:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %w", errUnavailable, ctx.Err())
	}
	if res.Err == nil {
		return res.Val.(*broker.Claims), nil
	}
	if errors.Is(res.Err, errUnavailable) && stale != nil {
		now := v.now()
		if now.UnixNano() < stale.stale && now.Unix() < stale.claims.Exp {
			v.metrics.staleHits.Inc()
			return stale.claims, nil
		}
	}
	return nil, res.Err
}

// store caches a definitive answer; failures are not cached (and do not
// displace a stale positive entry).
func (v *remoteValidator) store(key [32]byte, c *broker.Claims, err error) {
	now := v.now()
	var e *cacheEntry
	switch {
	case errors.Is(err, errBrokerSaysNo):
		v.cache.Remove(key) // a stale "valid" of a now-revoked token
		if v.negative != nil && v.negative.Add(key, now.Add(v.s.negativeTTL).UnixNano()) {
			v.metrics.evictions.Inc()
		}
		return
	case err == nil:
		exp := time.Unix(c.Exp, 0)
		fresh := now.Add(v.s.cacheTTL)
		if exp.Before(fresh) {
			fresh = exp
		}
		stale := fresh.Add(v.s.staleIfError)
		if exp.Before(stale) {
			stale = exp
		}
		e = &cacheEntry{claims: c, fresh: fresh.UnixNano(), stale: stale.UnixNano()}
	default:
		return
	}
	if v.cache.Add(key, e) {
		v.metrics.evictions.Inc()
	}
}

// call asks the broker once. It returns the claims, an error wrapping
// broker.ErrInvalidToken for a definitive no (errBrokerSaysNo for a
// well-formed "valid":false), or an error wrapping errUnavailable.
func (v *remoteValidator) call(ctx context.Context, tok string, lc localClaims) (*broker.Claims, error) {
	start := time.Now()
	c, timeout, err := v.roundTrip(ctx, tok, lc)
	v.metrics.latency.Observe(time.Since(start).Seconds())
	switch {
	case err == nil:
		v.metrics.valid.Inc()
	case errors.Is(err, broker.ErrInvalidToken):
		v.metrics.invalid.Inc()
	case timeout:
		v.metrics.timedOut.Inc()
	default:
		v.metrics.failed.Inc()
	}
	if err != nil && !errors.Is(err, broker.ErrInvalidToken) {
		if !v.failing.Swap(true) {
			v.logger.Warn("remote broker validation failing; requests without a usable cached answer get 503",
				zap.String("broker", v.s.endpoint), zap.Error(err))
		}
		return nil, fmt.Errorf("%w: %w", errUnavailable, err)
	}
	if v.failing.Swap(false) {
		v.logger.Info("remote broker validation recovered", zap.String("broker", v.s.endpoint))
	}
	return c, err
}

// validateAnswer is the strict shape of a /v1/token/validate answer.
type validateAnswer struct {
	Valid  *bool          `json:"valid"`
	Claims *broker.Claims `json:"claims"`
	Error  string         `json:"error"`
}

func (v *remoteValidator) roundTrip(ctx context.Context, tok string, lc localClaims) (c *broker.Claims, timeout bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, v.s.timeout)
	defer cancel()
	// precheck passed, so tok is base64url and dots: safe in a JSON string.
	body := make([]byte, 0, len(tok)+len(`{"token":""}`))
	body = append(append(append(body, `{"token":"`...), tok...), `"}`...)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, v.s.endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, false, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := v.client.Do(req)
	if err != nil {
		var ne net.Error
		return nil, errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()), err
	}
	defer func() {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxValidateResponse))
		resp.Body.Close()
	}()
	if resp.StatusCode != http.StatusOK {
		return nil, false, fmt.Errorf("broker answered HTTP %d", resp.StatusCode)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxValidateResponse+1))
	if err != nil {
		var ne net.Error
		return nil, errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()), fmt.Errorf("reading broker answer: %w", err)
	}
	if len(raw) > maxValidateResponse {
		return nil, false, errors.New("broker answer too large")
	}
	c, err = parseValidateAnswer(raw, lc, time.Now())
	return c, false, err
}

// parseValidateAnswer accepts only a single JSON object with a boolean
// "valid": false is a definitive no; true needs a claims object whose sub,
// jti and exp are present, match the token that was sent, and whose exp
// has not passed. Anything else is a malformed answer (not a "no").
func parseValidateAnswer(raw []byte, lc localClaims, now time.Time) (*broker.Claims, error) {
	var a validateAnswer // one pass; Unmarshal also rejects trailing data
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, fmt.Errorf("malformed broker answer: %w", err)
	}
	if a.Valid == nil {
		return nil, errors.New("malformed broker answer: no boolean valid")
	}
	if !*a.Valid {
		return nil, errBrokerSaysNo
	}
	c := a.Claims
	if c == nil {
		return nil, errors.New("malformed broker answer: valid without a claims object")
	}
	switch {
	case c.Sub == "" || c.Jti == "" || c.Exp == 0:
		return nil, errors.New("malformed broker answer: claims lack sub, jti or exp")
	case c.Sub != lc.Sub || c.Jti != lc.Jti || lc.Exp == nil || c.Exp != *lc.Exp:
		return nil, errors.New("malformed broker answer: claims do not belong to the token sent")
	case now.Unix() >= c.Exp:
		return nil, broker.ErrExpired
	}
	return c, nil
}

// parseBrokerOption parses the broker subdirective of agentwrit, the
// dispenser on "broker":
//
//	broker embedded
//	broker <url> [{
//		cache_ttl          <duration>   # 0: no caching
//		cache_size         <entries>
//		negative_cache_ttl <duration>   # 0: no negative caching
//		timeout            <duration>
//		stale_if_error     <duration>
//		tls_ca             <pem file>
//		tls_client_cert    <cert pem file> <key pem file>
//	}]
//
// It returns nil for embedded.
func parseBrokerOption(d *caddyfile.Dispenser) (*RemoteBroker, error) {
	if !d.NextArg() {
		return nil, d.Err("broker needs 'embedded' or the URL of a remote broker")
	}
	target := d.Val()
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	nesting := d.Nesting()
	if target == "embedded" {
		if d.NextBlock(nesting) {
			return nil, d.Err("broker embedded takes no options")
		}
		return nil, nil
	}
	rb := &RemoteBroker{URL: target}
	duration := func(name string, allowZero bool) (caddy.Duration, error) {
		if !d.NextArg() {
			return 0, d.ArgErr()
		}
		v, err := caddy.ParseDuration(d.Val())
		if err != nil {
			return 0, d.Errf("broker %s: %v", name, err)
		}
		if v < 0 || (v == 0 && !allowZero) {
			return 0, d.Errf("broker %s must be positive, not %s", name, d.Val())
		}
		if d.NextArg() {
			return 0, d.ArgErr()
		}
		return caddy.Duration(v), nil
	}
	seen := map[string]bool{}
	for d.NextBlock(nesting) {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("broker option %s given twice", opt)
		}
		seen[opt] = true
		var err error
		switch opt {
		case "cache_ttl", "negative_cache_ttl":
			var v caddy.Duration
			if v, err = duration(opt, true); err == nil {
				if opt == "cache_ttl" {
					rb.CacheTTL = &v
				} else {
					rb.NegativeCacheTTL = &v
				}
			}
		case "timeout":
			rb.Timeout, err = duration(opt, false)
		case "stale_if_error":
			rb.StaleIfError, err = duration(opt, true)
		case "cache_size":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			n, perr := strconv.Atoi(d.Val())
			if perr != nil || n < 1 {
				return nil, d.Errf("broker cache_size must be a positive integer, not %q (cache_ttl 0 turns caching off)", d.Val())
			}
			rb.CacheSize = n
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		case "tls_ca":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			rb.TLSCA = d.Val()
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		case "tls_client_cert":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return nil, d.Err("broker tls_client_cert takes two arguments: the certificate file and the key file")
			}
			rb.TLSClientCert = &RemoteClientCert{Cert: args[0], Key: args[1]}
		default:
			return nil, d.Errf("unrecognized broker option %q", opt)
		}
		if err != nil {
			return nil, err
		}
	}
	return rb, nil
}
