// Package caddymodule plugs AgentWrit into Caddy: the "agentwrit" app runs
// an embedded broker, the agentwrit_broker handler serves its API, and the
// agentwrit handler enforces tokens and scopes in front of any backend. It
// is glue: the broker, the route rules and the remote validator are
// Caddy-free packages (broker, scopemap, broker/remote).
package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the "agentwrit" app: the embedded broker's configuration and the
// broker itself. Its state lives in a database (a SQLite file, or
// PostgreSQL shared by a fleet of replicas) that a reload keeps open.
//
// Provision only checks the configuration; Start opens the database, so
// `caddy validate` writes nothing. Handlers that need the broker wait for
// Start (it comes moments after, in the same config load).
type App struct {
	// AdminSecret is the admin password, plaintext or a bcrypt hash.
	// Placeholders such as {env.AGENTWRIT_ADMIN_SECRET} are expanded at
	// load, so the secret never lands in adapted JSON. Required.
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
	// Database is a SQLite file (default <Caddy data dir>/agentwrit/broker.db)
	// or a postgres:// URL, usually {env.AGENTWRIT_DATABASE_URL} so its
	// password stays out of the config.
	Database string `json:"database,omitempty"`
	// DatabasePoolSize and DatabaseStatementTimeout tune PostgreSQL
	// (defaults: 10 connections, 5s).
	DatabasePoolSize         int            `json:"database_pool_size,omitempty"`
	DatabaseStatementTimeout caddy.Duration `json:"database_statement_timeout,omitempty"`
	// MaxRevocationStaleness bounds, with PostgreSQL, how far behind the
	// database this replica's revocation index may fall before enforcement
	// fails closed with 503 (default 5s).
	MaxRevocationStaleness caddy.Duration `json:"max_revocation_staleness,omitempty"`
	// AuditRetention, when set, prunes audit events older than this (at
	// most hourly), after an audit_pruned event that anchors the rest, so
	// `caddy agentwrit audit verify` still passes. Default: keep all.
	AuditRetention caddy.Duration `json:"audit_retention,omitempty"`
	// SigningKey optionally names a PKCS#8 PEM Ed25519 key file (created if
	// missing); by default the key set lives in the database.
	SigningKey string `json:"signing_key,omitempty"`

	cfg     broker.Config
	dsn     string
	metrics *collectors
	run     *running // made by Provision
	holds   bool     // Start took the store from the pool
	ctx     caddy.Context
}

// running is what Start makes and the handlers wait for.
type running struct {
	ready  chan struct{}                 // closed when Start has run (or failed)
	broker atomic.Pointer[broker.Broker] // set by Start
}

var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "agentwrit", New: func() caddy.Module { return new(App) }}
}

// Provision checks the configuration and prepares the broker's without
// opening anything.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx, a.run = ctx, &running{ready: make(chan struct{})}
	repl := caddy.NewReplacer()
	secret := repl.ReplaceKnown(a.AdminSecret, "")
	if secret == "" {
		return errors.New("agentwrit: admin_secret is required (for example admin_secret {env.AGENTWRIT_ADMIN_SECRET}, with that variable set); there is no default")
	}
	a.dsn = repl.ReplaceKnown(a.Database, "")
	if a.dsn == "" {
		a.dsn = filepath.Join(caddy.AppDataDir(), "agentwrit", "broker.db")
	}
	if abs, err := filepath.Abs(a.dsn); err == nil && !storage.IsURL(a.dsn) {
		a.dsn = abs
	}
	var err error
	if a.metrics, err = loadCollectors(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("agentwrit: metrics: %w", err)
	}
	a.cfg = broker.Config{
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
		Observer:       a.metrics.broker,
		MetricsHandler: promhttp.HandlerFor(ctx.GetMetricsRegistry(), promhttp.HandlerOpts{}),
	}
	if err := broker.CheckAdminSecret(secret); err != nil {
		return fmt.Errorf("agentwrit: %w", err)
	}
	// A stopping configuration ends its long-lived responses before the
	// HTTP servers wait for them to finish.
	ev, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("agentwrit: events: %w", err)
	}
	return ev.(*caddyevents.App).On("stopping", stopHandler(func() {
		if b := a.run.broker.Load(); b != nil {
			b.Close()
		}
	}))
}

// Validate checks what Provision could not.
func (a *App) Validate() error {
	for name, d := range map[string]caddy.Duration{
		"default_ttl": a.DefaultTTL, "admin_token_ttl": a.AdminTokenTTL, "app_token_ttl": a.AppTokenTTL,
		"database_statement_timeout": a.DatabaseStatementTimeout, "max_revocation_staleness": a.MaxRevocationStaleness,
		"audit_retention": a.AuditRetention,
	} {
		if d < 0 {
			return fmt.Errorf("agentwrit: %s must not be negative", name)
		}
	}
	if a.DatabasePoolSize < 0 {
		return errors.New("agentwrit: database_pool_size must not be negative")
	}
	return nil
}

// Start opens (or joins) the database and starts the broker.
func (a *App) Start() error {
	defer close(a.run.ready)
	if a.SigningKey != "" {
		key, err := broker.LoadKeyFile(caddy.NewReplacer().ReplaceKnown(a.SigningKey, ""))
		if err != nil {
			return fmt.Errorf("agentwrit: %w", err)
		}
		a.cfg.SigningKey = key
	}
	so := broker.StoreOptions{MaxStaleness: time.Duration(a.MaxRevocationStaleness), AuditRetention: time.Duration(a.AuditRetention)}
	do := storage.Options{MaxConns: int32(a.DatabasePoolSize), StatementTimeout: time.Duration(a.DatabaseStatementTimeout)}
	store, err := loadStore(a.ctx, a.dsn, do, so, a.ctx.Slogger())
	if err != nil {
		return fmt.Errorf("agentwrit: %w", err)
	}
	a.holds = true
	b, err := broker.New(store, a.cfg)
	if err != nil {
		return fmt.Errorf("agentwrit: %w", err)
	}
	if err := a.metrics.watch(a.ctx.GetMetricsRegistry(), store); err != nil {
		return fmt.Errorf("agentwrit: metrics: %w", err)
	}
	a.run.broker.Store(b)
	info := store.Info()
	a.ctx.Logger().Info("agentwrit broker started",
		zap.String("database", info.Kind), zap.String("location", info.Location), zap.Bool("shared", info.Shared))
	return nil
}

// Stop implements caddy.App; state is released in Cleanup.
func (a *App) Stop() error { return nil }

// Cleanup releases this config's hold on the shared database and metrics.
func (a *App) Cleanup() error {
	if a.run == nil {
		return nil
	}
	if b := a.run.broker.Load(); b != nil {
		b.Close()
	}
	a.metrics.release()
	if !a.holds {
		return nil
	}
	return releaseStore(a.dsn)
}

// errNotStarted: the app's Start did not succeed.
var errNotStarted = errors.New("agentwrit: the embedded broker did not start")

// Broker returns the embedded broker, waiting for Start if it has not run
// yet (handlers of a config start serving before all apps have started).
func (a *App) Broker(ctx context.Context) (*broker.Broker, error) {
	if b := a.run.broker.Load(); b != nil {
		return b, nil
	}
	select {
	case <-a.run.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if b := a.run.broker.Load(); b != nil {
		return b, nil
	}
	return nil, errNotStarted
}

// clientIP is Caddy's idea of the client address: it honours
// trusted_proxies, where upstream trusted X-Forwarded-For blindly (docs/compatibility.md, D11).
func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	return r.RemoteAddr
}

// stopHandler runs a function on a Caddy event.
type stopHandler func()

func (f stopHandler) Handle(context.Context, caddy.Event) error {
	f()
	return nil
}

// appOf returns the agentwrit app of ctx's config, or nil if it has none.
func appOf(ctx caddy.Context) (*App, error) {
	app, err := ctx.AppIfConfigured("agentwrit")
	switch {
	case errors.Is(err, caddy.ErrNotConfigured):
		return nil, nil
	case err != nil:
		return nil, err
	}
	return app.(*App), nil
}
