package caddymodule

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

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

// newValidator builds the remote validator, counting into m and logging
// to logger. No network I/O.
func (rb *RemoteBroker) newValidator(m *remoteMetrics, logger *slog.Logger) (*remote.Validator, error) {
	o, err := rb.options()
	if err != nil {
		return nil, err
	}
	o.Observer, o.Logger = m, logger
	return remote.New(o)
}
