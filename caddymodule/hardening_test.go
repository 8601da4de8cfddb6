package caddymodule_test

import (
	"context"
	"crypto/ed25519"
	"net/http"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/sqlite"
)

// The gateway's answers to what an adversarial review tried; each subtest
// failed on the first release of the gateway.
func TestGatewayHardening(t *testing.T) {
	db := tempDB(t)
	e := newEnv(t, db)
	e.start(gatewayRules + "\t\tpublic GET /static/{path...}\n\t\tunmapped deny\n")
	agentID, tok := e.agent("read:orders:42")
	auth := "Authorization: Bearer " + tok

	t.Run("Connection cannot drop identity headers", func(t *testing.T) {
		resp := e.raw("GET", "/orders/42", auth, "Connection: X-AgentWrit-Agent-ID, X-AgentWrit-Scope, X-AgentWrit-JTI")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, agentID, e.backend.header("X-AgentWrit-Agent-ID"))
		require.Equal(t, "read:orders:42", e.backend.header("X-AgentWrit-Scope"))
		require.NotEmpty(t, e.backend.header("X-AgentWrit-JTI"))
		require.NotEmpty(t, e.backend.header("X-AgentWrit-Task-ID"))
		require.NotEmpty(t, e.backend.header("X-AgentWrit-Orch-ID"))
	})
	t.Run("more than one Authorization header is 400", func(t *testing.T) {
		hits := e.backend.count()
		resp := e.raw("GET", "/orders/42", auth, "Authorization: Bearer other")
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
		require.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"))
		require.Equal(t, hits, e.backend.count(), "the backend saw nothing")
	})
	t.Run("dot segments behind matrix parameters are 400", func(t *testing.T) {
		for _, p := range []string{"/static/..;/orders/43", "/static/%2e%2e;/orders/43", "/static/.;x/a", "/static/%2E;/a", "/static/..;a=b/orders/43"} {
			resp := e.raw("GET", p)
			require.Equal(t, http.StatusBadRequest, resp.StatusCode, p)
		}
		require.Equal(t, http.StatusOK, e.raw("GET", "/static/app;v=1.js").StatusCode, "a matrix parameter on a real segment is fine")
	})
	t.Run("access_token in the query is 400 and says to use the header", func(t *testing.T) {
		hits := e.backend.count()
		resp, m := call(t, "GET", e.gatewayURL("/orders/42?access_token="+tok), "", nil)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
		require.Contains(t, m["detail"], "Authorization header")
		require.Equal(t, hits, e.backend.count())
	})
	t.Run("a body on GET is refused by default", func(t *testing.T) {
		resp := e.raw("GET", "/healthz", "Content-Length: 5\r\n\r\nhello")
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
		resp = e.raw("GET", "/healthz", "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n")
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
		require.Equal(t, http.StatusOK, e.raw("GET", "/healthz").StatusCode)
	})
	t.Run("a stored token whose scope is outside the grammar is 401", func(t *testing.T) {
		stored := func(scope string) string {
			return signWithBrokerKey(t, db, jwt.MapClaims{
				"iss": "", "sub": agentID, "aud": []string{}, "exp": time.Now().Add(time.Hour).Unix(),
				"nbf": time.Now().Unix(), "iat": time.Now().Unix(), "jti": "00000000000000000000000000000042",
				"scope": []string{scope}, "task_id": "t", "orch_id": "o",
			})
		}
		// The control: the same token with a scope in the grammar passes.
		resp, _ := call(t, "GET", e.gatewayURL("/orders/42"), stored("read:orders:42"), nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		for _, bad := range []string{"read:orders:42 admin:revoke:*", "read:orders:4\r\n2", "read:orders:42:x"} {
			forged := stored(bad)
			resp, _ := call(t, "GET", e.gatewayURL("/orders/42"), forged, nil)
			require.Equal(t, http.StatusUnauthorized, resp.StatusCode, bad)
			require.Equal(t, `Bearer realm="agentwrit", error="invalid_token"`, resp.Header.Get("WWW-Authenticate"), bad)
		}
	})
	t.Run("refuse_body_on off lets a GET body through", func(t *testing.T) {
		e.restart(gatewayRules + "\t\trefuse_body_on off\n")
		resp := e.raw("GET", "/healthz", "Content-Length: 5\r\n\r\nhello")
		require.Equal(t, http.StatusOK, resp.StatusCode)
	})
}

// signWithBrokerKey signs claims with the broker's active key, read from
// its database as an attacker who stole it would: a token the gateway must
// still refuse when its content is wrong.
func signWithBrokerKey(t *testing.T, path string, claims jwt.MapClaims) string {
	t.Helper()
	db, err := sqlite.Open(context.Background(), path, sqlite.Options{ReadOnly: true})
	require.NoError(t, err)
	defer db.Close()
	keys, err := db.SigningKeys(context.Background())
	require.NoError(t, err)
	key := keys[len(keys)-1].Private
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims)
	tok.Header["kid"] = broker.Thumbprint(key.Public().(ed25519.PublicKey))
	s, err := tok.SignedString(key)
	require.NoError(t, err)
	return s
}
