package caddymodule

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker/remote"
)

// RemoteBroker makes the enforcement handler validate tokens through an
// external AgentWrit broker's POST /v1/token/validate (the upstream broker,
// or another Caddy serving agentwrit_broker) instead of the embedded one.
// Package remote does the work; this is its Caddy configuration. Answers
// are cached in a bounded LRU keyed by the token's SHA-256; concurrent
// requests for one uncached token share one call. The broker is never
// contacted while the configuration loads.
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

// options turns the configuration into remote.Options: placeholders
// expanded, defaults where nothing was given (an explicit cache_ttl or
// negative_cache_ttl of 0 stays 0: off), negative durations refused by
// their configuration names, TLS files loaded. remote.New checks the rest.
// It does not touch the network.
func (rb *RemoteBroker) options() (remote.Options, error) {
	repl := caddy.NewReplacer()
	o := remote.Options{
		URL:      strings.TrimSpace(repl.ReplaceKnown(rb.URL, "")),
		CacheTTL: remote.DefaultCacheTTL, NegativeCacheTTL: remote.DefaultNegativeCacheTTL,
		CacheSize: rb.CacheSize,
	}
	for _, d := range []struct {
		name string
		v    *caddy.Duration
		dst  *time.Duration
	}{
		{"cache_ttl", rb.CacheTTL, &o.CacheTTL},
		{"negative_cache_ttl", rb.NegativeCacheTTL, &o.NegativeCacheTTL},
		{"timeout", &rb.Timeout, &o.Timeout},
		{"stale_if_error", &rb.StaleIfError, &o.StaleIfError},
	} {
		switch {
		case d.v == nil:
		case *d.v < 0:
			return o, fmt.Errorf("broker %s must not be negative (got %s)", d.name, time.Duration(*d.v))
		default:
			*d.dst = time.Duration(*d.v)
		}
	}
	if rb.CacheSize < 0 {
		return o, fmt.Errorf("broker cache_size must be positive (got %d); cache_ttl 0 turns caching off", rb.CacheSize)
	}
	if rb.TLSCA == "" && rb.TLSClientCert == nil {
		return o, nil
	}
	// Before the files: with an http URL, their content does not matter.
	if u, err := url.Parse(o.URL); err == nil && u.Scheme != "https" {
		return o, fmt.Errorf("broker url %q: tls_ca and tls_client_cert need an https URL", o.URL)
	}
	o.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	if rb.TLSCA != "" {
		file := repl.ReplaceKnown(rb.TLSCA, "")
		pem, err := os.ReadFile(file)
		if err != nil {
			return o, fmt.Errorf("broker tls_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return o, fmt.Errorf("broker tls_ca %s: no PEM certificate found", file)
		}
		o.TLS.RootCAs = pool
	}
	if cc := rb.TLSClientCert; cc != nil {
		if cc.Cert == "" || cc.Key == "" {
			return o, errors.New("broker tls_client_cert needs both a certificate and a key file")
		}
		cert, err := tls.LoadX509KeyPair(repl.ReplaceKnown(cc.Cert, ""), repl.ReplaceKnown(cc.Key, ""))
		if err != nil {
			return o, fmt.Errorf("broker tls_client_cert: %w", err)
		}
		o.TLS.Certificates = []tls.Certificate{cert}
	}
	return o, nil
}

// newValidator builds the remote validator, counting into reg and logging
// to logger. No network I/O.
func (rb *RemoteBroker) newValidator(reg prometheus.Registerer, logger *slog.Logger) (*remote.Validator, error) {
	o, err := rb.options()
	if err != nil {
		return nil, err
	}
	m, err := newRemoteMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	o.Observer, o.Logger = m, logger
	return remote.New(o)
}

// remoteMetrics count the remote validator's events (registered per
// provision against Caddy's registry, shared by the handlers of one
// config).
type remoteMetrics struct {
	hits, misses, evictions, staleHits prometheus.Counter
	calls                              [remote.NumOutcomes]prometheus.Counter
	latency                            prometheus.Observer
}

var _ remote.Observer = (*remoteMetrics)(nil)

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
	for o := range m.calls {
		m.calls[o] = calls.WithLabelValues(remote.Outcome(o).String())
	}
	hist, err := register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "agentwrit_gateway_remote_call_duration_seconds",
		Help:    "Latency of calls to the remote broker's /v1/token/validate.",
		Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
	}))
	errs = append(errs, err)
	m.latency = hist
	return m, errors.Join(errs...)
}

func (m *remoteMetrics) CacheHit()      { m.hits.Inc() }
func (m *remoteMetrics) CacheMiss()     { m.misses.Inc() }
func (m *remoteMetrics) CacheEviction() { m.evictions.Inc() }
func (m *remoteMetrics) StaleHit()      { m.staleHits.Inc() }
func (m *remoteMetrics) Call(o remote.Outcome, d time.Duration) {
	m.calls[o].Inc()
	m.latency.Observe(d.Seconds())
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
