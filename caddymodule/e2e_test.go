package caddymodule_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/require"
)

func tempDB(t testing.TB) string { return filepath.Join(t.TempDir(), "broker.db") }

// TestEnforcementTable walks every row of the gateway's enforcement table (docs/api.md, the gateway's status codes)
// through a real Caddy in front of a real backend.
func TestEnforcementTable(t *testing.T) {
	e := newEnv(t, tempDB(t))
	e.start(gatewayRules + "\t\tunmapped deny\n")
	agentID, tok := e.agent("read:orders:42", "read:acct:a", "write:acct:b")

	t.Run("non-canonical paths are 400 before matching", func(t *testing.T) {
		for _, p := range []string{"/orders/../orders/42", "/orders/./42", "//orders/42", "/orders//42",
			"/orders/4%2F2", "/orders/4%5c2", "/orders/4%002", "/orders/%2e%2e/42", "/orders/42/."} {
			resp := e.raw("GET", p, "Authorization: Bearer "+tok)
			require.Equal(t, http.StatusBadRequest, resp.StatusCode, p)
			require.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"), p)
		}
		// Invalid percent-encoding never reaches a handler: Go's server answers 400 itself.
		require.Equal(t, http.StatusBadRequest, e.raw("GET", "/orders/%zz").StatusCode)
	})
	t.Run("unmapped route is 403 route_not_mapped", func(t *testing.T) {
		resp, m := call(t, "GET", e.gatewayURL("/nothing/here"), tok, nil)
		require.Equal(t, http.StatusForbidden, resp.StatusCode)
		require.Equal(t, "route_not_mapped", m["error_code"])
		require.Equal(t, "urn:agentwrit:error:route_not_mapped", m["type"])
	})
	t.Run("public route passes without token, ignores a bad one, forwards no identity", func(t *testing.T) {
		resp, _ := call(t, "GET", e.gatewayURL("/healthz"), "", nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		req, _ := http.NewRequest("GET", e.gatewayURL("/healthz"), nil)
		req.Header.Set("Authorization", "Bearer not.a.token")
		req.Header.Set("X-AgentWrit-Agent-ID", "spiffe://evil/agent")
		resp, err := client.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Empty(t, e.backend.header("X-AgentWrit-Agent-ID"))
	})
	t.Run("no bearer token is 401 with a challenge", func(t *testing.T) {
		resp, m := call(t, "GET", e.gatewayURL("/orders/42"), "", nil)
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		require.Equal(t, `Bearer realm="agentwrit"`, resp.Header.Get("WWW-Authenticate"))
		require.Equal(t, "unauthorized", m["error_code"])
		require.NotEmpty(t, m["request_id"])
	})
	t.Run("invalid token is 401 invalid_token with a generic detail", func(t *testing.T) {
		resp, m := call(t, "GET", e.gatewayURL("/orders/42"), tok+"x", nil)
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		require.Equal(t, `Bearer realm="agentwrit", error="invalid_token"`, resp.Header.Get("WWW-Authenticate"))
		require.Equal(t, "token verification failed", m["detail"])
	})
	t.Run("token signed by another key is 401", func(t *testing.T) {
		_, other, err := ed25519.GenerateKey(rand.Reader)
		require.NoError(t, err)
		forged, err := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{
			"iss": "", "sub": agentID, "exp": time.Now().Add(time.Hour).Unix(), "jti": "0123456789abcdef0123456789abcdef",
			"scope": []string{"read:orders:42"},
		}).SignedString(other)
		require.NoError(t, err)
		resp, _ := call(t, "GET", e.gatewayURL("/orders/42"), forged, nil)
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	})
	t.Run("scope not covered is 403 insufficient_scope naming the scope", func(t *testing.T) {
		resp, m := call(t, "GET", e.gatewayURL("/orders/43"), tok, nil)
		require.Equal(t, http.StatusForbidden, resp.StatusCode)
		require.Equal(t, `Bearer realm="agentwrit", error="insufficient_scope", scope="read:orders:43"`, resp.Header.Get("WWW-Authenticate"))
		require.Equal(t, "insufficient_scope", m["error_code"])
	})
	t.Run("all listed scopes are required", func(t *testing.T) {
		resp, _ := call(t, "POST", e.gatewayURL("/transfer/a/b"), tok, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		resp, _ = call(t, "POST", e.gatewayURL("/transfer/a/c"), tok, nil)
		require.Equal(t, http.StatusForbidden, resp.StatusCode)
	})
	t.Run("allowed request reaches the backend with identity, spoofed headers replaced", func(t *testing.T) {
		req, _ := http.NewRequest("GET", e.gatewayURL("/orders/42"), nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		for _, h := range []string{"X-AgentWrit-Agent-ID", "X-AgentWrit-Task-ID", "X-AgentWrit-Orch-ID", "X-AgentWrit-Scope", "X-AgentWrit-JTI"} {
			req.Header.Set(h, "spoofed")
		}
		resp, err := client.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, agentID, e.backend.header("X-AgentWrit-Agent-ID"))
		require.Equal(t, "task-e2e", e.backend.header("X-AgentWrit-Task-ID"))
		require.Equal(t, "orch-e2e", e.backend.header("X-AgentWrit-Orch-ID"))
		require.Equal(t, "read:orders:42 read:acct:a write:acct:b", e.backend.header("X-AgentWrit-Scope"))
		require.Regexp(t, `^[0-9a-f]{32}$`, e.backend.header("X-AgentWrit-JTI"))
		require.Equal(t, "Bearer "+tok, e.backend.header("Authorization"), "forward_token defaults to on")
		require.Equal(t, agentID, e.backend.header("X-Placeholder-User"))
		require.Equal(t, "read:orders:42", e.backend.header("X-Placeholder-Required"))
		require.Equal(t, "0", e.backend.header("X-Placeholder-Depth"))
		require.Equal(t, e.backend.header("X-AgentWrit-JTI"), e.backend.header("X-Placeholder-Jti"))
	})
	t.Run("spoofed headers are removed on denied-but-reported and public requests too", func(t *testing.T) {
		req, _ := http.NewRequest("GET", e.gatewayURL("/healthz"), nil)
		req.Header.Set("X-AgentWrit-Scope", "admin:everything:*")
		resp, err := client.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Empty(t, e.backend.header("X-AgentWrit-Scope"))
	})
	t.Run("HEAD is served by the GET rule", func(t *testing.T) {
		resp, _ := call(t, "HEAD", e.gatewayURL("/orders/42"), tok, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		resp, _ = call(t, "HEAD", e.gatewayURL("/orders/43"), tok, nil)
		require.Equal(t, http.StatusForbidden, resp.StatusCode)
	})
	t.Run("a path value outside the scope grammar never widens", func(t *testing.T) {
		_, wild := e.agent("read:orders:*")
		for _, p := range []string{"/orders/4%3A2", "/orders/4:2", "/orders/4%3a2", "/orders/a%20b", "/orders/caf%C3%A9", "/orders/%22x%22"} {
			resp := e.raw("GET", p, "Authorization: Bearer "+wild)
			require.Equal(t, http.StatusForbidden, resp.StatusCode, p)
		}
		// "*" as a value is a literal identifier: only a granted "*" covers it.
		resp := e.raw("GET", "/orders/*", "Authorization: Bearer "+tok)
		require.Equal(t, http.StatusForbidden, resp.StatusCode)
		resp = e.raw("GET", "/orders/*", "Authorization: Bearer "+wild)
		require.Equal(t, http.StatusOK, resp.StatusCode)
	})
	t.Run("placeholders in scope templates", func(t *testing.T) {
		_, host := e.agent("read:hosts:127.0.0.1")
		resp, _ := call(t, "GET", e.gatewayURL("/hosts/1"), host, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		resp, _ = call(t, "GET", e.gatewayURL("/hosts/1"), tok, nil)
		require.Equal(t, http.StatusForbidden, resp.StatusCode)
	})
	t.Run("denials land in the audit chain", func(t *testing.T) {
		events := e.auditEvents("scope_violation")
		require.NotEmpty(t, events)
		last := events[len(events)-1].(map[string]any)
		require.Equal(t, "denied", last["outcome"])
		require.True(t, strings.HasPrefix(last["resource"].(string), "GET /") || strings.HasPrefix(last["resource"].(string), "POST /") ||
			strings.HasPrefix(last["resource"].(string), "HEAD /"), last["resource"])
		require.NotEmpty(t, e.auditEvents("token_auth_failed"))
	})
}

// TestRevocationAndReleaseTakeEffectOnNextRequest: embedded mode has zero lag.
func TestRevocationAndReleaseTakeEffectOnNextRequest(t *testing.T) {
	e := newEnv(t, tempDB(t))
	e.start(gatewayRules)
	_, tok := e.agent("read:orders:1")
	resp, _ := call(t, "GET", e.gatewayURL("/orders/1"), tok, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = call(t, "POST", e.brokerURL("/v1/token/release"), tok, nil)
	require.Equal(t, http.StatusNoContent, resp.StatusCode)
	resp, _ = call(t, "GET", e.gatewayURL("/orders/1"), tok, nil)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.NotEmpty(t, e.auditEvents("token_revoked_access"))

	agentID, tok2 := e.agent("read:orders:1")
	resp, _ = call(t, "GET", e.gatewayURL("/orders/1"), tok2, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, m := call(t, "POST", e.brokerURL("/v1/revoke"), e.adminToken(), map[string]string{"level": "agent", "target": agentID})
	require.Equal(t, http.StatusOK, resp.StatusCode, m)
	resp, _ = call(t, "GET", e.gatewayURL("/orders/1"), tok2, nil)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
}

// TestReportMode lets denied requests through but still counts and audits them.
func TestReportMode(t *testing.T) {
	e := newEnv(t, tempDB(t))
	e.start(gatewayRules + "\t\tmode report\n")
	_, tok := e.agent("read:orders:1")
	before := len(e.auditEvents("scope_violation"))
	hits := e.backend.count()
	resp, _ := call(t, "GET", e.gatewayURL("/orders/2"), tok, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = call(t, "GET", e.gatewayURL("/orders/2"), "", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, hits+2, e.backend.count())
	require.Len(t, e.auditEvents("scope_violation"), before+1)
	require.Equal(t, 1.0, e.metric("agentwrit_gateway_decisions_total", `result="report"`, `reason="insufficient_scope"`))
	require.Equal(t, 1.0, e.metric("agentwrit_gateway_decisions_total", `result="report"`, `reason="missing_token"`))
	require.Empty(t, e.backend.header("X-AgentWrit-Agent-ID"), "a denied request carries no identity")
}

// TestForwardTokenOff strips Authorization before the backend.
func TestForwardTokenOff(t *testing.T) {
	e := newEnv(t, tempDB(t))
	e.start(gatewayRules + "\t\tforward_token off\n")
	_, tok := e.agent("read:orders:1")
	resp, _ := call(t, "GET", e.gatewayURL("/orders/1"), tok, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Empty(t, e.backend.header("Authorization"))
}

// TestUnmappedAuthenticated lets any valid token through unmapped routes.
func TestUnmappedAuthenticated(t *testing.T) {
	e := newEnv(t, tempDB(t))
	e.start(gatewayRules + "\t\tunmapped authenticated\n")
	_, tok := e.agent("read:orders:1")
	resp, _ := call(t, "GET", e.gatewayURL("/elsewhere"), tok, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = call(t, "GET", e.gatewayURL("/elsewhere"), "", nil)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
}
