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
	// ($2a$/$2b$/$2y$). Required; CheckAdminSecret says what is refused.
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
	// SigningKey, when set, is the one key that signs and verifies (the
	// signing_key file), instead of the database's key set.
	SigningKey ed25519.PrivateKey
	// VerifyCacheSize bounds the verified-claims cache; negative disables it.
	VerifyCacheSize int
	// ClientIP returns the client address used by the rate limiters. The
	// default is the host of RemoteAddr; X-Forwarded-For is never trusted
	// here: a proxy in front must supply the real address.
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

func isBcryptHash(s string) bool {
	return len(s) == 60 && (strings.HasPrefix(s, "$2a$") || strings.HasPrefix(s, "$2b$") || strings.HasPrefix(s, "$2y$"))
}

// placeholderSecret is upstream's sample secret, refused as upstream does.
const placeholderSecret = "change-me-in-production"

// CheckAdminSecret refuses an admin secret no deployment should run with:
// empty, or upstream's sample value. Errors wrap ErrBadConfig.
func CheckAdminSecret(secret string) error {
	switch secret {
	case "":
		return fmt.Errorf("%w: admin_secret is required", ErrBadConfig)
	case placeholderSecret:
		return fmt.Errorf("%w: admin_secret must not be the placeholder %q", ErrBadConfig, secret)
	}
	return nil
}

// HashSecret bcrypts a secret at upstream's cost, for configurations that
// should not hold the plaintext. It refuses what CheckAdminSecret refuses.
func HashSecret(secret string) (string, error) {
	if err := CheckAdminSecret(secret); err != nil {
		return "", err
	}
	h, err := bcrypt.GenerateFromPassword([]byte(secret), bcryptCost)
	return string(h), err
}

// withDefaults fills zero values and validates; errors wrap ErrBadConfig.
func (c Config) withDefaults() (Config, error) {
	if err := CheckAdminSecret(c.AdminSecret); err != nil {
		return c, err
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
