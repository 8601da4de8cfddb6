package caddymodule

import (
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/stretchr/testify/require"
)

// TestAppCaddyfile: every global option reaches its field, and mistakes
// name the option and the line.
func TestAppCaddyfile(t *testing.T) {
	var a App
	require.NoError(t, a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`agentwrit {
		admin_secret s3cret
		trust_domain example.org
		issuer https://broker.example
		audience orders-api
		default_ttl 5m
		max_ttl 1h
		admin_token_ttl 10m
		app_token_ttl 20m
		database postgres://u@db/agentwrit {
			pool_size 20
			statement_timeout 3s
		}
		max_revocation_staleness 2s
		audit_retention 2160h
		signing_key /etc/agentwrit/key.pem
	}`)))
	require.Equal(t, App{
		AdminSecret: "s3cret", TrustDomain: "example.org", Issuer: "https://broker.example", Audience: "orders-api",
		DefaultTTL: caddy.Duration(5 * time.Minute), MaxTTL: caddy.Duration(time.Hour),
		AdminTokenTTL: caddy.Duration(10 * time.Minute), AppTokenTTL: caddy.Duration(20 * time.Minute),
		Database: "postgres://u@db/agentwrit", DatabasePoolSize: 20, DatabaseStatementTimeout: caddy.Duration(3 * time.Second),
		MaxRevocationStaleness: caddy.Duration(2 * time.Second), AuditRetention: caddy.Duration(2160 * time.Hour),
		SigningKey: "/etc/agentwrit/key.pem",
	}, a)

	for in, want := range map[string]string{
		"agentwrit {\n\taudit_retention forever\n}":               "audit_retention",
		"agentwrit {\n\tdatabase x.db {\n\t\tpool_size 0\n\t}\n}": "pool_size must be a positive integer",
		"agentwrit {\n\tretention 1h\n}":                          `unrecognized agentwrit option "retention"`,
		"agentwrit {\n\tadmin_secret\n}":                          "admin_secret needs a value",
	} {
		var a App
		err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
		require.ErrorContains(t, err, want, in)
		require.ErrorContains(t, err, "Testfile:", in)
	}
	require.ErrorContains(t, (&App{AuditRetention: -1}).Validate(), "audit_retention must not be negative")
}
