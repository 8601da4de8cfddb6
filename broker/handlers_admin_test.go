package broker

import (
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRoute_AdminAuth(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.AdminTokenTTL = 123 * time.Second })
	rec := e.do("POST", "/v1/admin/auth", "", map[string]string{"secret": testAdminSecret})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, []string{"access_token", "expires_in", "token_type"}, jsonKeys(t, rec.Body.Bytes()))
	m := decode(t, rec)
	require.Equal(t, "Bearer", m["token_type"])
	require.Equal(t, float64(123), m["expires_in"])
	tok := m["access_token"].(string)
	require.Equal(t, []string{"iss", "sub", "exp", "nbf", "iat", "jti", "scope"}, payloadKeys(t, tok), "no aud when none is configured")
	c := claimsOf(t, tok)
	require.Equal(t, "admin", c["sub"])
	require.Equal(t, []any{"admin:launch-tokens:*", "admin:revoke:*", "admin:audit:*"}, c["scope"])
	require.Equal(t, float64(123), c["exp"].(float64)-c["iat"].(float64))
	hdr, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
	require.Equal(t, `{"alg":"EdDSA","typ":"JWT","kid":"`+e.broker.KeyID()+`"}`, string(hdr))
	ev := e.lastEvent(EventAdminAuth)
	require.Equal(t, "admin authenticated as admin", ev.Detail)
	require.Equal(t, OutcomeSuccess, ev.Outcome)
	require.Empty(t, ev.AgentID)

	requireProblem(t, e.do("POST", "/v1/admin/auth", "", map[string]string{"secret": "nope"}), 401, "unauthorized", "invalid credentials")
	ev = e.lastEvent(EventAdminAuthFailed)
	require.Equal(t, "failed admin authentication attempt", ev.Detail)
	require.Equal(t, OutcomeDenied, ev.Outcome)

	oldFormat := `Admin auth format changed. Use {"secret": "..."} instead of client_id/client_secret`
	requireProblem(t, e.do("POST", "/v1/admin/auth", "", `{"client_id":"a","client_secret":"b"}`), 400, "invalid_request", oldFormat)
	requireProblem(t, e.do("POST", "/v1/admin/auth", "", `{"secret":"`+testAdminSecret+`","client_id":"a"}`), 400, "invalid_request", oldFormat)
	require.Contains(t, e.do("POST", "/v1/admin/auth", "", `{"client_secret":"x"}`).Body.String(), `\"secret\": \"...\"`)
	requireProblem(t, e.do("POST", "/v1/admin/auth", "", `{"secret":"`+testAdminSecret+`"} x`), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, e.do("POST", "/v1/admin/auth", "", nil), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, e.do("POST", "/v1/admin/auth", "", `{"secret":7}`), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, e.do("POST", "/v1/admin/auth", "", `{}`), 400, "invalid_request", "secret is required")

	// With an audience configured, admin tokens carry it.
	e = newTestEnv(t, func(c *Config) { c.Audience = "aud-1"; c.Issuer = "iss-1" })
	c = claimsOf(t, e.adminToken())
	require.Equal(t, []any{"aud-1"}, c["aud"])
	require.Equal(t, "iss-1", c["iss"])
}

// --- 10.12 POST /v1/admin/launch-tokens ---

func TestRoute_AdminLaunchTokens(t *testing.T) {
	clk := newTestClock()
	clk.Advance(700 * time.Millisecond) // expires_at is truncated to the second
	e := newTestEnv(t, withClock(clk))
	admin := e.adminToken()

	rec := e.do("POST", "/v1/admin/launch-tokens", admin, map[string]any{"agent_name": "bot", "allowed_scope": []string{"*:*:*", "read:data:*"}})
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	require.Equal(t, []string{"launch_token", "expires_at", "policy"}, jsonKeys(t, rec.Body.Bytes()))
	require.Equal(t, []string{"allowed_scope", "max_ttl"}, jsonKeys(t, rawField(t, rec.Body.Bytes(), "policy")), "no single_use")
	m := decode(t, rec)
	require.Regexp(t, hex64, m["launch_token"])
	require.Equal(t, clk.Now().Add(30*time.Second).UTC().Truncate(time.Second).Format(time.RFC3339), m["expires_at"])
	require.Equal(t, map[string]any{"allowed_scope": []any{"*:*:*", "read:data:*"}, "max_ttl": float64(300)}, m["policy"])
	ev := e.lastEvent(EventLaunchTokenIssued)
	require.Equal(t, "launch token issued for agent=bot scope=[*:*:* read:data:*] max_ttl=300 created_by=admin", ev.Detail)
	require.Equal(t, OutcomeSuccess, ev.Outcome)
	require.Empty(t, ev.AgentID)

	// Explicit values: max_ttl is echoed unclamped, ttl is never clamped.
	rec = e.do("POST", "/v1/admin/launch-tokens", admin, map[string]any{"agent_name": "bot", "allowed_scope": []string{"x:y:z"}, "max_ttl": 999999, "ttl": 200000, "single_use": nil})
	require.Equal(t, http.StatusCreated, rec.Code)
	m = decode(t, rec)
	require.Equal(t, float64(999999), m["policy"].(map[string]any)["max_ttl"])
	require.Equal(t, clk.Now().Add(200000*time.Second).UTC().Truncate(time.Second).Format(time.RFC3339), m["expires_at"])
	// Non-positive values take the defaults.
	rec = e.do("POST", "/v1/admin/launch-tokens", admin, map[string]any{"agent_name": "bot", "allowed_scope": []string{"x:y:z"}, "max_ttl": -5, "ttl": 0})
	m = decode(t, rec)
	require.Equal(t, float64(300), m["policy"].(map[string]any)["max_ttl"])
	require.Equal(t, clk.Now().Add(30*time.Second).UTC().Truncate(time.Second).Format(time.RFC3339), m["expires_at"])

	// Errors, with launch_token_denied audits.
	requireProblem(t, e.do("POST", "/v1/admin/launch-tokens", admin, nil), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, e.do("POST", "/v1/admin/launch-tokens", admin, `{"agent_name":"a","allowed_scope":["x:y:z"],"ttl":30.0}`), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, e.do("POST", "/v1/admin/launch-tokens", admin, map[string]any{"allowed_scope": []string{"x:y:z"}}), 400, "invalid_request", "agent_name is required")
	ev = e.lastEvent(EventLaunchTokenDenied)
	require.Equal(t, "launch token denied for agent= by=admin reason=agent_name is required", ev.Detail)
	require.Equal(t, "admin", ev.AgentID)
	require.Equal(t, OutcomeDenied, ev.Outcome)
	requireProblem(t, e.do("POST", "/v1/admin/launch-tokens", admin, map[string]any{"agent_name": "bot", "allowed_scope": []string{}}), 400, "invalid_request", "allowed_scope must not be empty")
	require.Equal(t, "launch token denied for agent=bot by=admin reason=allowed_scope must not be empty", e.lastEvent(EventLaunchTokenDenied).Detail)

	requireScopeError(t, e, "POST", "/v1/admin/launch-tokens", "admin:launch-tokens:*")
	requireBearerErrors(t, e, "POST", "/v1/admin/launch-tokens")
}

// --- 10.13 POST /v1/app/launch-tokens, 10.14–10.19 apps ---
