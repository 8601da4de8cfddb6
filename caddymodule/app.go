// Package caddymodule plugs AgentWrit into Caddy: the "agentwrit" app runs
// an embedded broker, the agentwrit_broker handler serves its API, and the
// agentwrit handler enforces tokens and scopes in front of any backend.
package caddymodule

import (
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage"
)

func init() {
	caddy.RegisterModule(App{})
	httpcaddyfile.RegisterGlobalOption("agentwrit", parseGlobalOption)
}

// App is the "agentwrit" app: the embedded broker's configuration and the
// broker itself. Its state lives in a SQLite database shared across reloads.
type App struct {
	// AdminSecret is the admin password, plaintext or a bcrypt hash.
	// Placeholders such as {env.AGENTWRIT_ADMIN_SECRET} are expanded. Required.
	AdminSecret string `json:"admin_secret,omitempty"`
	// TrustDomain is the SPIFFE trust domain of agent IDs (default agentwrit.local).
	TrustDomain string `json:"trust_domain,omitempty"`
	// Issuer, if set, is the iss claim of issued tokens and is checked on verify.
	Issuer string `json:"issuer,omitempty"`
	// Audience, if set, is the aud claim of issued tokens and is required by
	// Bearer routes and by the enforcement handler.
	Audience string `json:"audience,omitempty"`
	// DefaultTTL is the fallback token lifetime (default 5m).
	DefaultTTL caddy.Duration `json:"default_ttl,omitempty"`
	// MaxTTL clamps every token lifetime (default 24h; negative: no clamp).
	MaxTTL caddy.Duration `json:"max_ttl,omitempty"`
	// AdminTokenTTL is the lifetime of admin tokens (default 5m).
	AdminTokenTTL caddy.Duration `json:"admin_token_ttl,omitempty"`
	// AppTokenTTL is the default token_ttl of new apps (default 30m).
	AppTokenTTL caddy.Duration `json:"app_token_ttl,omitempty"`
	// Database is the SQLite file (default <Caddy data dir>/agentwrit/broker.db).
	Database string `json:"database,omitempty"`
	// SigningKey optionally names a PKCS#8 PEM Ed25519 key file (created if
	// missing); by default the key lives in the database.
	SigningKey string `json:"signing_key,omitempty"`

	broker  *broker.Broker
	dbPath  string
	metrics *metrics
	logger  *zap.Logger
}

var (
	_ caddy.App             = (*App)(nil)
	_ caddy.Provisioner     = (*App)(nil)
	_ caddy.Validator       = (*App)(nil)
	_ caddy.CleanerUpper    = (*App)(nil)
	_ caddyfile.Unmarshaler = (*App)(nil)
)

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "agentwrit", New: func() caddy.Module { return new(App) }}
}

// Provision opens (or joins) the database and configures the broker.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	repl := caddy.NewReplacer()
	secret := repl.ReplaceKnown(a.AdminSecret, "")
	if secret == "" {
		return errors.New("agentwrit: admin_secret is required (for example admin_secret {$AGENTWRIT_ADMIN_SECRET}, with that variable set); there is no default")
	}
	a.dbPath = repl.ReplaceKnown(a.Database, "")
	if a.dbPath == "" {
		a.dbPath = filepath.Join(caddy.AppDataDir(), "agentwrit", "broker.db")
	}
	if abs, err := filepath.Abs(a.dbPath); err == nil && !storage.IsURL(a.dbPath) {
		a.dbPath = abs
	}
	var err error
	if a.metrics, err = newMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("agentwrit: metrics: %w", err)
	}
	cfg := broker.Config{
		AdminSecret:    secret,
		TrustDomain:    a.TrustDomain,
		Issuer:         a.Issuer,
		Audience:       a.Audience,
		DefaultTTL:     time.Duration(a.DefaultTTL),
		MaxTTL:         time.Duration(a.MaxTTL),
		AdminTokenTTL:  time.Duration(a.AdminTokenTTL),
		AppTokenTTL:    time.Duration(a.AppTokenTTL),
		ClientIP:       clientIP,
		Logger:         ctx.Slogger(),
		Observer:       a.metrics,
		MetricsHandler: promhttp.HandlerFor(ctx.GetMetricsRegistry(), promhttp.HandlerOpts{}),
	}
	if a.SigningKey != "" {
		if cfg.SigningKey, err = broker.LoadKeyFile(repl.ReplaceKnown(a.SigningKey, "")); err != nil {
			return fmt.Errorf("agentwrit: %w", err)
		}
	}
	store, err := loadStore(ctx, a.dbPath, broker.StoreOptions{}, ctx.Slogger())
	if err != nil {
		return fmt.Errorf("agentwrit: %w", err)
	}
	if a.broker, err = broker.New(store, cfg); err != nil {
		_ = releaseStore(a.dbPath)
		return fmt.Errorf("agentwrit: %w", err)
	}
	return nil
}

// Validate checks what Provision could not.
func (a *App) Validate() error {
	for name, d := range map[string]caddy.Duration{
		"default_ttl": a.DefaultTTL, "admin_token_ttl": a.AdminTokenTTL, "app_token_ttl": a.AppTokenTTL,
	} {
		if d < 0 {
			return fmt.Errorf("agentwrit: %s must not be negative", name)
		}
	}
	return nil
}

// Start implements caddy.App; the broker has nothing to start.
func (a *App) Start() error { return nil }

// Stop implements caddy.App; state is released in Cleanup.
func (a *App) Stop() error { return nil }

// Cleanup releases this config's hold on the shared database.
func (a *App) Cleanup() error {
	if a.broker == nil {
		return nil
	}
	return releaseStore(a.dbPath)
}

// Broker returns the embedded broker (nil before Provision).
func (a *App) Broker() *broker.Broker { return a.broker }

// clientIP is Caddy's idea of the client address: it honours
// trusted_proxies, where upstream trusted X-Forwarded-For blindly (D11).
func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	return r.RemoteAddr
}

// UnmarshalCaddyfile sets up the app from the global option:
//
//	agentwrit {
//		admin_secret    <secret or bcrypt hash>
//		trust_domain    <domain>
//		issuer          <iss>
//		audience        <aud>
//		default_ttl     <duration>
//		max_ttl         <duration>
//		admin_token_ttl <duration>
//		app_token_ttl   <duration>
//		database        <path>
//		signing_key     <pem file>
//	}
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		name := d.Val()
		strs := map[string]*string{
			"admin_secret": &a.AdminSecret, "trust_domain": &a.TrustDomain, "issuer": &a.Issuer,
			"audience": &a.Audience, "database": &a.Database, "signing_key": &a.SigningKey,
		}
		durs := map[string]*caddy.Duration{
			"default_ttl": &a.DefaultTTL, "max_ttl": &a.MaxTTL, "admin_token_ttl": &a.AdminTokenTTL, "app_token_ttl": &a.AppTokenTTL,
		}
		args := d.RemainingArgs()
		if len(args) != 1 {
			if name == "admin_secret" && len(args) == 0 {
				return d.Err("admin_secret needs a value; if you wrote {$AGENTWRIT_ADMIN_SECRET}, that environment variable is empty or unset")
			}
			return d.Errf("%s takes exactly one argument", name)
		}
		if p, ok := strs[name]; ok {
			*p = args[0]
			continue
		}
		if p, ok := durs[name]; ok {
			dur, err := caddy.ParseDuration(args[0])
			if err != nil {
				return d.Errf("%s: %v", name, err)
			}
			*p = caddy.Duration(dur)
			continue
		}
		return d.Errf("unrecognized agentwrit option %q", name)
	}
	return nil
}

func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "agentwrit", Value: caddyconfig.JSON(app, nil)}, nil
}
