package caddymodule_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/caddymodule"
)

// localGatewayBlock is the broker block of a verify local gateway, its
// credentials given as environment placeholders.
func localGatewayBlock(url string) string {
	return fmt.Sprintf(`		broker %s {
			verify        local
			client_id     {env.AGENTWRIT_GATEWAY_CLIENT_ID}
			client_secret {env.AGENTWRIT_GATEWAY_CLIENT_SECRET}
			max_staleness 5s
		}
`, url)
}

// logTo is e's configuration with Caddy's log written to file.
func (e *env) logTo(caddyfile, file string) string {
	return strings.Replace(caddyfile, "output discard", "output file "+file, 1)
}

// TestRemoteLocalE2E: one Caddy serves the broker and a gateway in verify
// local mode. The gateway decides from the broker's keys and revocation
// feed, with no validate call; a revocation through the broker's API is
// refused on the next requests. Pointed at an upstream-like broker (no
// feed), the same configuration answers 503 and logs why.
func TestRemoteLocalE2E(t *testing.T) {
	e := newEnv(t, tempDB(t))
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	e.start(gatewayRules) // the embedded gateway first: the broker must run to register the app
	resp, app := call(t, "POST", e.brokerURL("/v1/admin/apps"), e.adminToken(),
		map[string]any{"name": "gateway", "scopes": []string{broker.FeedScope}})
	require.Equal(t, 201, resp.StatusCode, app)
	secret := app["client_secret"].(string)
	t.Setenv("AGENTWRIT_GATEWAY_CLIENT_ID", app["client_id"].(string))
	t.Setenv("AGENTWRIT_GATEWAY_CLIENT_SECRET", secret)

	require.NoError(t, e.load(e.logTo(e.caddyfile(localGatewayBlock(e.brokerURL(""))+gatewayRules), logFile)))
	agentID, tok := e.agent("read:orders:42")
	synced := pollStatus(t, e.gatewayURL("/orders/42"), tok, 200, 20*time.Second, 503) // 503 until the feed has synchronized
	t.Logf("the gateway allowed %s after the agent registered", synced.Round(time.Millisecond))
	require.Equal(t, agentID, e.backend.header("X-AgentWrit-Agent-ID"))
	requireStatus(t, 403, "GET", e.gatewayURL("/orders/43"), tok)
	requireStatus(t, 401, "GET", e.gatewayURL("/orders/42"), tok[:len(tok)-4]+"AAAA")

	e.revoke(tok)
	pollStatus(t, e.gatewayURL("/orders/42"), tok, 401, 2*time.Second, 200)
	hits := e.backend.count()
	for range 3 {
		requireStatus(t, 401, "GET", e.gatewayURL("/orders/42"), tok)
	}
	require.Equal(t, hits, e.backend.count())
	require.Zero(t, e.metric("agentwrit_gateway_remote_calls_total"), "no validate call")
	require.GreaterOrEqual(t, e.metric("agentwrit_gateway_feed_connects_total"), 1.0)
	require.GreaterOrEqual(t, e.metric("agentwrit_gateway_decisions_total", `reason="revoked"`), 1.0)

	t.Run("an upstream-like broker without a feed is 503, with the reason logged", func(t *testing.T) {
		f := caddymodule.NewFakeBroker(t)
		_, tok := e.agent("read:orders:42")
		hits := e.backend.count()
		require.NoError(t, e.load(e.logTo(e.caddyfile(localGatewayBlock(f.Server.URL)+gatewayRules), logFile)))
		var logs []byte
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(string(logs), "has no revocation feed") {
			resp, m := requireStatus(t, 503, "GET", e.gatewayURL("/orders/42"), tok)
			require.Equal(t, "broker_unavailable", m["error_code"])
			require.NotEmpty(t, resp.Header.Get("Retry-After"))
			require.True(t, time.Now().Before(deadline), "no log line says why:\n%s", logs)
			time.Sleep(50 * time.Millisecond)
			logs, _ = os.ReadFile(logFile)
		}
		require.Contains(t, string(logs), `"level":"error"`)
		require.NotContains(t, string(logs), secret, "the secret is never logged")
		require.Equal(t, hits, e.backend.count(), "nothing was let through")
		require.Zero(t, f.Calls())
	})
}
