package caddymodule

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/remote"
)

// RemoteBroker makes the enforcement handler validate tokens with an
// external AgentWrit broker (the upstream broker, or another Caddy serving
// agentwrit_broker) instead of the embedded one. Package remote does the
// work; this is its Caddy configuration.
//
// With verify validate (the default, and the only mode an upstream broker
// supports) tokens go to the broker's POST /v1/token/validate; answers are
// cached in a bounded LRU keyed by the token's SHA-256, and concurrent
// requests for one uncached token share one call. With verify local,
// tokens are verified with the broker's published keys and checked
// against a copy of its revocations that its revocation feed keeps
// current: no call per request. The handler waits for neither at load:
// the broker is never contacted while the configuration loads.
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
	// The app login of verify local and usage reports wait for their
	// answer up to 30s if that is longer: a login is a bcrypt on the broker.
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
	// Verify is "validate" (the default: every uncached token is asked
	// about) or "local" (JWKS and the revocation feed: this project's
	// broker only).
	Verify string `json:"verify,omitempty"`
	// ClientID and ClientSecret are the credentials of the app whose token
	// reads the revocation feed (verify local only, and required there);
	// its scope ceiling must include read:revocations:*. Placeholders such
	// as {env.AGENTWRIT_GATEWAY_CLIENT_SECRET} are expanded at load and
	// stay placeholders in the JSON config; the secret is never logged.
	ClientID     string `json:"client_id,omitempty"`
	ClientSecret string `json:"client_secret,omitempty"`
	// MaxStaleness is how long after the feed's last heartbeat (sent every
	// 2s) tokens are still accepted in verify local (default 5s, more than
	// 2s): past it, requests on enforced routes are refused with 503 and
	// Retry-After, or validated through the broker with fallback validate.
	MaxStaleness caddy.Duration `json:"max_staleness,omitempty"`
	// Fallback "validate" makes verify local ask the broker's
	// /v1/token/validate while the feed is stale or not yet synchronized,
	// instead of answering 503. Default off.
	Fallback string `json:"fallback,omitempty"`
	// ClientCallRate bounds the calls for uncached tokens one client IP
	// may cause (per second, bursts of twice as many, and at most 8 at a
	// time): default 50; -1 (Caddyfile "off") turns the bound off, for a
	// gateway behind a proxy that hides client addresses.
	ClientCallRate int `json:"client_call_rate,omitempty"`
}

// Values of RemoteBroker.Verify and Fallback.
const (
	VerifyValidate = "validate"
	VerifyLocal    = "local"
)

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
	if err := rb.modeOptions(repl, &o); err != nil {
		return o, err
	}
	if rb.TLSCA == "" && rb.TLSClientCert == nil {
		return o, nil
	}
	// Before the files: with an http URL, their content does not matter.
	if u, err := url.Parse(o.URL); err == nil && u.Scheme != "https" {
		return o, fmt.Errorf("broker url %q: tls_ca and tls_client_cert need an https URL", remote.RedactURL(o.URL))
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

// modeOptions puts verify and what belongs to it into o, by their
// configuration names; placeholders in the credentials are expanded, and
// neither the secret nor its expansion appears in an error.
func (rb *RemoteBroker) modeOptions(repl *caddy.Replacer, o *remote.Options) error {
	if rb.ClientCallRate < -1 {
		return fmt.Errorf("broker client_call_rate must be positive or off (got %d)", rb.ClientCallRate)
	}
	o.ClientCallRate = rb.ClientCallRate
	switch rb.Verify {
	case "", VerifyValidate:
		for name, set := range map[string]bool{"client_id": rb.ClientID != "", "client_secret": rb.ClientSecret != "",
			"max_staleness": rb.MaxStaleness != 0, "fallback": rb.Fallback != ""} {
			if set {
				return fmt.Errorf("broker %s applies only to verify local", name)
			}
		}
		return nil
	case VerifyLocal:
	default:
		return fmt.Errorf("broker verify must be %q or %q, not %q", VerifyValidate, VerifyLocal, rb.Verify)
	}
	o.Mode = remote.ModeLocal
	o.ClientID = strings.TrimSpace(repl.ReplaceKnown(rb.ClientID, ""))
	o.ClientSecret = strings.TrimSpace(repl.ReplaceKnown(rb.ClientSecret, ""))
	switch {
	case rb.ClientID == "" || rb.ClientSecret == "":
		return fmt.Errorf("broker verify local needs client_id and client_secret: the credentials of an app whose scope ceiling includes %s", broker.FeedScope)
	case o.ClientID == "":
		return errors.New("broker client_id is empty once its placeholders are expanded")
	case o.ClientSecret == "":
		return errors.New("broker client_secret is empty once its placeholders are expanded")
	case rb.MaxStaleness < 0 || (rb.MaxStaleness > 0 && time.Duration(rb.MaxStaleness) <= broker.FeedHeartbeat):
		return fmt.Errorf("broker max_staleness must be longer than the feed's heartbeat interval, %s (got %s)",
			broker.FeedHeartbeat, time.Duration(rb.MaxStaleness))
	}
	o.MaxStaleness = time.Duration(rb.MaxStaleness)
	switch rb.Fallback {
	case "", "off":
	case VerifyValidate:
		o.Fallback = true
	default:
		return fmt.Errorf("broker fallback must be %q or \"off\", not %q", VerifyValidate, rb.Fallback)
	}
	return nil
}

// unmarshalVerifyOption parses the broker options of verify and local
// mode (see parseBrokerOption), the dispenser on the option's name. It
// reports whether opt is one of them. The secret is kept as written, so a
// placeholder stays one in the JSON config.
func (rb *RemoteBroker) unmarshalVerifyOption(d *caddyfile.Dispenser, opt string) (bool, error) {
	switch opt {
	case "verify", "client_id", "client_secret", "max_staleness", "fallback", "client_call_rate":
	default:
		return false, nil
	}
	args := d.RemainingArgs()
	if len(args) != 1 { // said without the arguments: they may be a secret
		return true, d.Errf("broker %s takes exactly one argument", opt)
	}
	v := args[0]
	choice := func(dst *string, choices ...string) error {
		if !slices.Contains(choices, v) {
			return d.Errf("broker %s must be %s, not %q", opt, strings.Join(choices, " or "), v)
		}
		*dst = v
		return nil
	}
	switch opt {
	case "verify":
		return true, choice(&rb.Verify, VerifyValidate, VerifyLocal)
	case "client_id":
		rb.ClientID = v
	case "client_secret":
		rb.ClientSecret = v
	case "max_staleness":
		dur, err := caddy.ParseDuration(v)
		if err != nil {
			return true, d.Errf("broker max_staleness: %v", err)
		}
		if dur <= broker.FeedHeartbeat {
			return true, d.Errf("broker max_staleness must be longer than the feed's heartbeat interval, %s, not %s", broker.FeedHeartbeat, v)
		}
		rb.MaxStaleness = caddy.Duration(dur)
	case "fallback":
		return true, choice(&rb.Fallback, VerifyValidate, "off")
	case "client_call_rate":
		n, err := strconv.Atoi(v)
		switch {
		case v == "off":
			rb.ClientCallRate = -1
		case err != nil || n < 1:
			return true, d.Errf("broker client_call_rate must be a positive integer or off, not %q", v)
		default:
			rb.ClientCallRate = n
		}
	}
	return true, nil
}

// checkVerifyOptions checks, at the end of the broker block, that the
// options of local mode come with it, and it with its credentials.
func (rb *RemoteBroker) checkVerifyOptions(d *caddyfile.Dispenser) error {
	local := rb.Verify == VerifyLocal
	switch {
	case local && (rb.ClientID == "" || rb.ClientSecret == ""):
		return d.Errf("broker verify local needs client_id and client_secret: an app whose scope ceiling includes %s", broker.FeedScope)
	case !local && (rb.ClientID != "" || rb.ClientSecret != "" || rb.MaxStaleness != 0 || rb.Fallback != ""):
		return d.Err("broker client_id, client_secret, max_staleness and fallback apply only to verify local")
	}
	return nil
}

// newValidator builds the remote validator, counting into m (and the
// health collectors, registered into reg) and logging to logger. No
// network I/O.
func (rb *RemoteBroker) newValidator(m *remoteMetrics, logger *slog.Logger, reg prometheus.Registerer) (*remote.Validator, error) {
	o, err := rb.options()
	if err != nil {
		return nil, err
	}
	h := remoteHealth()
	for _, c := range h.all {
		if _, err := register(reg, c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	o.Observer, o.Logger, o.ClientIP = gatewayObserver{m, h}, logger, callerIP
	return remote.New(o)
}

// usageRecorder counts this gateway's scope usage and reports it to the
// broker as the verify-local app (whose ceiling must then hold
// write:usage:* too), or is nil: without app credentials a remote gateway
// has no way to report.
func (rb *RemoteBroker) usageRecorder(v *remote.Validator, logger *slog.Logger) *broker.UsageRecorder {
	o, err := rb.options()
	if err != nil || o.ClientID == "" {
		return nil
	}
	return broker.NewUsageRecorder(broker.UsageOptions{
		Sink: client.NewUsageReporter(v.API(), o.ClientID, o.ClientSecret), Logger: logger,
	})
}

// callerIP is the client address Caddy determined (trusted_proxies
// applied), the key of the validator's per-client bound. It is read only
// when a call to the broker may be needed, so the request path allocates
// nothing for it.
func callerIP(ctx context.Context) string {
	ip, _ := caddyhttp.GetVar(ctx, caddyhttp.ClientIPVarKey).(string)
	return ip
}

// gatewayObserver is a remote validator's Observer: the cache and call
// counters of metrics.go, and the health counters below.
type gatewayObserver struct {
	*remoteMetrics
	*healthMetrics
}

var _ remote.HealthObserver = gatewayObserver{}

// healthMetrics count the events of remote validators' link to their
// broker. Like the pooled collectors they live as long as the process, so
// that they keep counting across reloads; each configuration's registry
// gets them registered.
type healthMetrics struct {
	feedConnects, feedDisconnects, feedStale prometheus.Counter
	keysOK, keysFailed                       prometheus.Counter
	breakerOpens, clientLimited              prometheus.Counter
	all                                      []prometheus.Collector
}

var remoteHealth = sync.OnceValue(func() *healthMetrics {
	h := &healthMetrics{}
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		h.all = append(h.all, c)
		return c
	}
	h.feedConnects = counter("agentwrit_gateway_feed_connects_total", "Revocation feed streams that delivered their first heartbeat (verify local).")
	h.feedDisconnects = counter("agentwrit_gateway_feed_disconnects_total", "Revocation feed streams that ended after delivering a heartbeat (verify local).")
	h.feedStale = counter("agentwrit_gateway_feed_stale_total", "Times the revocation feed went silent past max_staleness, so tokens were refused or validated through the broker (verify local).")
	keys := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentwrit_gateway_jwks_refreshes_total",
		Help: "Fetches of the broker's JWKS, by outcome (ok, error)."}, []string{"outcome"})
	h.all = append(h.all, keys)
	h.keysOK, h.keysFailed = keys.WithLabelValues("ok"), keys.WithLabelValues("error")
	h.breakerOpens = counter("agentwrit_gateway_breaker_opens_total", "Times calls to the remote broker were suspended after repeated failures.")
	h.clientLimited = counter("agentwrit_gateway_client_limited_total", "Calls for uncached tokens refused because their client IP had reached its bound.")
	return h
})

func (h *healthMetrics) FeedConnected()    { h.feedConnects.Inc() }
func (h *healthMetrics) FeedDisconnected() { h.feedDisconnects.Inc() }
func (h *healthMetrics) FeedStale()        { h.feedStale.Inc() }
func (h *healthMetrics) BreakerOpened()    { h.breakerOpens.Inc() }
func (h *healthMetrics) ClientLimited()    { h.clientLimited.Inc() }

func (h *healthMetrics) KeysRefreshed(ok bool) {
	if ok {
		h.keysOK.Inc()
	} else {
		h.keysFailed.Inc()
	}
}
