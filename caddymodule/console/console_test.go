package console_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/caddymodule/console"
)

// consoles are the two ways to reach a broker: in process, and through
// the reverse proxy to a remote one.
func consoles(t *testing.T) (*brokertest.Server, map[string]*httptest.Server) {
	b := brokertest.New(t, brokertest.Options{})
	u, err := url.Parse(b.URL)
	require.NoError(t, err)
	out := map[string]*httptest.Server{
		"embedded": httptest.NewServer(console.New(b.Broker)),
		"remote":   httptest.NewServer(console.New(console.Remote(u))),
	}
	for _, s := range out {
		t.Cleanup(s.Close)
	}
	return b, out
}

func do(t *testing.T, method, u, token, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func requireSecurityHeaders(t *testing.T, resp *http.Response, what string) {
	t.Helper()
	require.Equal(t, console.ContentSecurityPolicy, resp.Header.Get("Content-Security-Policy"), what)
	require.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"), what)
	require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"), what)
	require.Equal(t, "no-referrer", resp.Header.Get("Referrer-Policy"), what)
}

func TestSecurityHeadersOnEveryResponse(t *testing.T) {
	b, cs := consoles(t)
	token := b.AdminToken(t)
	for name, c := range cs {
		t.Run(name, func(t *testing.T) {
			cases := []struct {
				what, method, path, token string
				status                    int
				api                       bool
			}{
				{"page", "GET", "/", "", http.StatusOK, false},
				{"page by name", "GET", "/index.html", "", http.StatusOK, false},
				{"script", "GET", "/app.js", "", http.StatusOK, false},
				{"style", "GET", "/style.css", "", http.StatusOK, false},
				{"API answer", "GET", "/v1/admin/status", token, http.StatusOK, true},
				{"API refusal", "GET", "/v1/admin/status", "", http.StatusUnauthorized, true},
				{"asset 404", "GET", "/nothing.js", "", http.StatusNotFound, false},
				{"API 404", "GET", "/v1/health", "", http.StatusNotFound, true},
				{"API wrong method", "DELETE", "/v1/revoke", token, http.StatusMethodNotAllowed, true},
				{"asset wrong method", "POST", "/", "", http.StatusMethodNotAllowed, false},
			}
			for _, tc := range cases {
				resp := do(t, tc.method, c.URL+tc.path, tc.token, "")
				require.Equal(t, tc.status, resp.StatusCode, tc.what)
				requireSecurityHeaders(t, resp, tc.what)
				if tc.api {
					require.Equal(t, "no-store", resp.Header.Get("Cache-Control"), tc.what)
				}
			}
		})
	}
}

func TestAssetsAreServedWithTheirTypes(t *testing.T) {
	_, cs := consoles(t)
	c := cs["embedded"]
	for path, ctype := range map[string]string{"/": "text/html", "/app.js": "text/javascript", "/style.css": "text/css"} {
		resp := do(t, "GET", c.URL+path, "", "")
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		require.True(t, strings.HasPrefix(resp.Header.Get("Content-Type"), ctype), "%s: %s", path, resp.Header.Get("Content-Type"))
	}
}

func TestPathsOutsideAssetsAndAPIAre404(t *testing.T) {
	_, cs := consoles(t)
	c := cs["embedded"]
	for _, p := range []string{"/nothing", "/assets/app.js", "/.well-known/jwks.json", "/v1/challenge",
		"/v1/admin/keys", "/v1/admin/keys/rotate", "/v1/", "/index.html/", "/%2e%2e/console.go", "/a/../../console.go"} {
		resp := do(t, "GET", c.URL+p, "", "")
		require.Equal(t, http.StatusNotFound, resp.StatusCode, p)
		requireSecurityHeaders(t, resp, p)
	}
}

func TestForwardingKeepsTheBrokersAuthorization(t *testing.T) {
	b, cs := consoles(t)
	for name, c := range cs {
		t.Run(name, func(t *testing.T) {
			// No token: the broker itself refuses.
			resp := do(t, "GET", c.URL+"/v1/admin/agents", "", "")
			require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
			require.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"))

			// Sign in through the console, then use that token.
			resp = do(t, "POST", c.URL+"/v1/admin/auth", "", `{"secret":"`+brokertest.AdminSecret+`"}`)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			var auth struct {
				AccessToken string `json:"access_token"`
				ExpiresIn   int64  `json:"expires_in"`
			}
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&auth))
			require.NotEmpty(t, auth.AccessToken)
			require.Positive(t, auth.ExpiresIn)

			agent := b.Agent(t, "read:orders:1")
			resp = do(t, "GET", c.URL+"/v1/admin/agents?limit=50", auth.AccessToken, "")
			require.Equal(t, http.StatusOK, resp.StatusCode)
			var list struct {
				Agents []struct {
					AgentID string `json:"agent_id"`
				} `json:"agents"`
			}
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&list))
			var ids []string
			for _, a := range list.Agents {
				ids = append(ids, a.AgentID)
			}
			require.Contains(t, ids, agent.ID)

			// An agent's token lacks admin scope: the broker says 403.
			resp = do(t, "GET", c.URL+"/v1/audit/events", agent.Token, "")
			require.Equal(t, http.StatusForbidden, resp.StatusCode)

			// Revoke through the console; the agent's token dies.
			resp = do(t, "POST", c.URL+"/v1/revoke", auth.AccessToken, `{"level":"agent","target":"`+agent.ID+`"}`)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			resp = do(t, "POST", b.URL+"/v1/token/validate", "", `{"token":"`+agent.Token+`"}`)
			var v struct{ Valid bool }
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&v))
			require.False(t, v.Valid)
		})
	}
}

func TestRemoteBrokerDown(t *testing.T) {
	s := httptest.NewServer(http.NotFoundHandler())
	u, _ := url.Parse(s.URL)
	s.Close()
	c := httptest.NewServer(console.New(console.Remote(u)))
	defer c.Close()
	resp := do(t, "GET", c.URL+"/v1/admin/status", "x", "")
	require.Equal(t, http.StatusBadGateway, resp.StatusCode)
	requireSecurityHeaders(t, resp, "bad gateway")
}

func decodeJSON(t *testing.T, resp *http.Response, v any) {
	t.Helper()
	require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
}
