package caddymodule_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestMetricsAcrossAdminReload is the operator's view of the metrics: it
// reloads the way `caddy reload` does (the config POSTed to the admin
// API's /load) and restarts on the same database, scraping /metrics each
// time. agentwrit_active_agents must equal the agents holding a live
// token (counted here, and as the broker's status reports them); a counter
// continues across the reload and starts over after the restart.
func TestMetricsAcrossAdminReload(t *testing.T) {
	e := newEnv(t, tempDB(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	withAdmin := func(rules string) string {
		return strings.Replace(e.caddyfile(rules), "admin off", "admin "+adminAddr, 1)
	}
	require.NoError(t, e.load(withAdmin(gatewayRules)))

	liveAgents := func() float64 {
		resp, m := call(t, "GET", e.brokerURL("/v1/admin/status"), e.adminToken(), nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, m)
		return m["live_agents"].(float64)
	}
	_, tok := e.agent("read:orders:1")
	_, _ = e.agent("read:orders:1")
	revokedID, _ := e.agent("read:orders:1")
	resp, m := call(t, "POST", e.brokerURL("/v1/revoke"), e.adminToken(), map[string]string{"level": "agent", "target": revokedID})
	require.Equal(t, http.StatusOK, resp.StatusCode, m)
	resp, _ = call(t, "GET", e.gatewayURL("/orders/1"), tok, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)

	allowed := func() float64 { return e.metric("agentwrit_gateway_decisions_total", `result="allow"`) }
	require.Equal(t, 2.0, e.metric("agentwrit_active_agents"), "three registered, one revoked")
	require.Equal(t, liveAgents(), e.metric("agentwrit_active_agents"))
	require.Equal(t, 1.0, allowed())

	// `caddy reload` adapts the Caddyfile and POSTs it to /load; the admin
	// API adapts a text/caddyfile body itself, the same adapter.
	req, err := http.NewRequest("POST", "http://"+adminAddr+"/load",
		strings.NewReader(withAdmin(gatewayRules+"\t\trequire GET /more/{id} read:more:{id}\n")))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err = client.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "reload through the admin API")

	require.Equal(t, 2.0, e.metric("agentwrit_active_agents"), "right after the reload")
	require.Equal(t, 1.0, allowed(), "the counter kept its value")
	resp, _ = call(t, "GET", e.gatewayURL("/orders/1"), tok, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, 2.0, allowed(), "and counts on")
	_, _ = e.agent("read:orders:2")
	require.Equal(t, 3.0, e.metric("agentwrit_active_agents"))
	require.Equal(t, liveAgents(), e.metric("agentwrit_active_agents"))

	// A restart: a new process would start its counters from zero; the
	// gauge comes from the database.
	e.restart(gatewayRules)
	require.Equal(t, 3.0, e.metric("agentwrit_active_agents"), "right after the restart")
	require.Equal(t, liveAgents(), e.metric("agentwrit_active_agents"))
	require.Equal(t, 0.0, allowed(), "counters start over after a restart")
}
