// Package broker is an embedded AgentWrit credential broker: it issues,
// verifies, renews, releases, revokes and delegates short-lived EdDSA JWTs
// for AI agents, keeps apps, launch tokens, agents, revocations and a
// hash-chained audit trail in SQLite, and serves the AgentWrit HTTP API so
// existing AgentWrit clients work against it unchanged.
//
// It does not import Caddy: the caddymodule package wires it into Caddy,
// and anything else can serve it with net/http.
package broker

import (
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Defaults are upstream's.
const (
	DefaultTrustDomain   = "agentwrit.local"
	DefaultTTL           = 300 * time.Second
	DefaultMaxTTL        = 86400 * time.Second
	DefaultAdminTokenTTL = 300 * time.Second
	DefaultAppTokenTTL   = 1800 * time.Second
	// DefaultVerifyCacheSize bounds the cache of verified token claims:
	// room for a quarter million live tokens at about 430 bytes each
	// (BenchmarkVerifyCacheMemory), roughly 100 MiB of heap at most. Only
	// tokens with a valid signature are cached, so junk cannot fill it.
	DefaultVerifyCacheSize = 250_000
	// Version is reported by /v1/health; it is the upstream API version we speak.
	Version = "2.0.0"
	// bcryptCost is upstream's cost for admin and client secrets.
	bcryptCost = 12
)

// Config is the broker's configuration. Durations are whole seconds on the
// wire; a zero value means the upstream default.
type Config struct {
	// AdminSecret is the admin password, plaintext or a bcrypt hash
	// ($2a$/$2b$/$2y$). Required; "change-me-in-production" is refused.
	AdminSecret string
	// TrustDomain is the SPIFFE trust domain of agent IDs.
	TrustDomain string
	// Issuer, when set, is the iss of issued tokens and is required on verify.
	Issuer string
	// Audience, when set, is the aud of issued tokens and is required on
	// Bearer-authenticated routes.
	Audience string
	// DefaultTTL is the fallback token lifetime.
	DefaultTTL time.Duration
	// MaxTTL clamps every token lifetime; negative means no clamp.
	MaxTTL time.Duration
	// AdminTokenTTL and AppTokenTTL are the lifetimes of admin tokens and
	// the default token_ttl of new apps.
	AdminTokenTTL, AppTokenTTL time.Duration
	// SigningKey overrides the key kept in the database (signing_key file).
	SigningKey ed25519.PrivateKey
	// VerifyCacheSize bounds the verified-claims cache; negative disables it.
	VerifyCacheSize int
	// ClientIP returns the client address used by the rate limiters. The
	// default is the host of RemoteAddr; X-Forwarded-For is never trusted
	// here (D11): a proxy in front must supply the real address.
	ClientIP func(*http.Request) string
	// Logger receives operational messages; nil discards them.
	Logger *slog.Logger
	// Observer receives metric events; nil discards them.
	Observer Observer
	// MetricsHandler serves GET /v1/metrics; nil answers an empty exposition.
	MetricsHandler http.Handler
	// Now is the clock; nil means time.Now. For tests.
	Now func() time.Time
}

var trustDomainRE = regexp.MustCompile(`^[a-z0-9._-]+$`)

// Broker is one configured broker over a shared Store. It is safe for
// concurrent use. Several Brokers may share a Store (during a reload).
type Broker struct {
	cfg       Config
	store     *Store
	signer    *signer
	verifier  *verifier
	cache     *claimsCache
	adminHash []byte
	obs       Observer
	log       *slog.Logger
	now       func() time.Time
	started   time.Time
	limits    *limiters
	handler   http.Handler
}

func isBcryptHash(s string) bool {
	return len(s) == 60 && (strings.HasPrefix(s, "$2a$") || strings.HasPrefix(s, "$2b$") || strings.HasPrefix(s, "$2y$"))
}

// HashSecret bcrypts a secret at upstream's cost, for configurations that
// should not hold the plaintext.
func HashSecret(secret string) (string, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(secret), bcryptCost)
	return string(h), err
}

// withDefaults fills zero values and validates; errors wrap ErrBadConfig.
func (c Config) withDefaults() (Config, error) {
	switch c.AdminSecret {
	case "":
		return c, fmt.Errorf("%w: admin_secret is required", ErrBadConfig)
	case "change-me-in-production":
		return c, fmt.Errorf("%w: admin_secret must not be the placeholder %q", ErrBadConfig, c.AdminSecret)
	}
	if c.TrustDomain == "" {
		c.TrustDomain = DefaultTrustDomain
	}
	if !trustDomainRE.MatchString(c.TrustDomain) {
		return c, fmt.Errorf("%w: trust_domain %q: only [a-z0-9._-] allowed", ErrBadConfig, c.TrustDomain)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"default_ttl", &c.DefaultTTL, DefaultTTL},
		{"max_ttl", &c.MaxTTL, DefaultMaxTTL},
		{"admin_token_ttl", &c.AdminTokenTTL, DefaultAdminTokenTTL},
		{"app_token_ttl", &c.AppTokenTTL, DefaultAppTokenTTL},
	} {
		if *d.v == 0 {
			*d.v = d.def
		}
		if *d.v > 0 && *d.v < time.Second {
			return c, fmt.Errorf("%w: %s %v is shorter than one second", ErrBadConfig, d.name, *d.v)
		}
		if *d.v < 0 && d.name != "max_ttl" {
			return c, fmt.Errorf("%w: %s must not be negative", ErrBadConfig, d.name)
		}
	}
	if c.VerifyCacheSize == 0 {
		c.VerifyCacheSize = DefaultVerifyCacheSize
	}
	if c.ClientIP == nil {
		c.ClientIP = remoteHost
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	return c, nil
}

func remoteHost(r *http.Request) string {
	if h, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return h
	}
	return r.RemoteAddr
}

// New configures a broker over store. A plaintext admin secret is hashed
// here (bcrypt cost 12, as upstream), so New takes a few hundred
// milliseconds unless the secret is already a hash.
func New(store *Store, cfg Config) (*Broker, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	hash := []byte(cfg.AdminSecret)
	if !isBcryptHash(cfg.AdminSecret) {
		if hash, err = bcrypt.GenerateFromPassword([]byte(cfg.AdminSecret), bcryptCost); err != nil {
			return nil, fmt.Errorf("hash admin secret: %w", err)
		}
	}
	key := cfg.SigningKey
	if key == nil {
		key = store.key
	}
	b := &Broker{
		cfg:       cfg,
		store:     store,
		signer:    newSigner(key),
		cache:     newClaimsCache(cfg.VerifyCacheSize),
		adminHash: hash,
		obs:       cfg.Observer,
		log:       cfg.Logger,
		now:       cfg.Now,
		started:   cfg.Now(),
		limits:    newLimiters(),
	}
	b.verifier = newVerifier(b.signer.pub, cfg.Issuer, cfg.Now)
	b.handler = b.routes()
	return b, nil
}

// Store returns the store the broker runs on.
func (b *Broker) Store() *Store { return b.store }

// KeyID is the kid of the broker's signing key.
func (b *Broker) KeyID() string { return b.signer.kid }

// PublicKey is the broker's token-verification key.
func (b *Broker) PublicKey() ed25519.PublicKey { return b.signer.pub }

// JWKS is the broker's public key set (D13).
func (b *Broker) JWKS() JWKSet { return JWKSet{Keys: []JWK{jwkOf(b.signer.pub)}} }

// ttl resolves a token lifetime as upstream §4.4 does, in whole seconds.
func (b *Broker) ttl(requested int64) int64 {
	if requested <= 0 {
		requested = int64(b.cfg.DefaultTTL / time.Second)
	}
	if maxTTL := int64(b.cfg.MaxTTL / time.Second); maxTTL > 0 && requested > maxTTL {
		requested = maxTTL
	}
	return requested
}
