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

// noRedirects: a redirect is not an answer; the 3xx counts as a failure.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
