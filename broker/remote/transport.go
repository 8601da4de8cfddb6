package remote

import (
	"crypto/tls"
	"net"
	"net/http"
	"time"
)

// newHTTPClient is the HTTP client of one Validator (or follower):
// bounded connections, every phase under timeout, redirects refused.
// broker/client builds the requests on it.
func newHTTPClient(timeout time.Duration, tc *tls.Config) *http.Client {
	dialer := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment, // as Go and Caddy's reverse_proxy do; loopback is never proxied
		DialContext:           dialer.DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   timeout,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          MaxConns,
		MaxIdleConnsPerHost:   MaxConns,
		MaxConnsPerHost:       MaxConns,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: timeout,
	}
	return &http.Client{Transport: transport, Timeout: timeout, CheckRedirect: noRedirects}
}

// LoginTimeout bounds an app login (POST /v1/app/auth) and the other
// calls off the request path (usage reports), in place of the per-call
// Timeout when that is shorter. A login is a bcrypt at cost 12 on the
// broker: a quarter of a second on an idle core, seconds on a broker busy
// with many gateways logging in at once (after it restarts) or under the
// race detector. Bounded by a Timeout of 2 s, such a login never
// succeeds: each attempt is abandoned, yet costs the broker its whole
// bcrypt, and the retries keep it busy, so the gateway never gets an app
// token and local mode never synchronizes.
const LoginTimeout = 30 * time.Second

// newOffPathHTTPClient is newHTTPClient for the calls off the request
// path: connecting is bounded by timeout, the answer by LoginTimeout.
func newOffPathHTTPClient(timeout time.Duration, tc *tls.Config) *http.Client {
	hc := newHTTPClient(timeout, tc)
	bound := max(timeout, LoginTimeout)
	hc.Timeout = bound
	hc.Transport.(*http.Transport).ResponseHeaderTimeout = bound
	return hc
}

// noRedirects: a redirect is not an answer; the 3xx counts as a failure.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
