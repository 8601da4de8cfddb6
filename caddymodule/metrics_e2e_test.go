package caddymodule_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestMetricsAcrossReload scrapes Caddy's metrics endpoint after traffic,
// reloads (Caddy builds a fresh registry per config load) and restarts:
// counters continue across a reload (they live with the process, not the
// config) and start over after a restart, as Prometheus users expect, and
// the gauges are computed from the database, so they are right after both.
func TestMetricsAcrossReload(t *testing.T) {
	e := newEnv(t, tempDB(t))
	e.start(gatewayRules)
	_, tok := e.agent("read:orders:1")
	resp, _ := call(t, "GET", e.gatewayURL("/orders/1"), tok, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = call(t, "GET", e.gatewayURL("/orders/2"), tok, nil)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)

	require.Equal(t, 1.0, e.metric("agentwrit_gateway_decisions_total", `result="allow"`, `reason="ok"`))
	require.Equal(t, 1.0, e.metric("agentwrit_gateway_decisions_total", `result="deny"`, `reason="insufficient_scope"`))
	require.Equal(t, 1.0, e.metric("agentwrit_registrations_total", `status="success"`))
	require.GreaterOrEqual(t, e.metric("agentwrit_tokens_issued_total"), 2.0, "admin and agent tokens")
	require.Equal(t, 1.0, e.metric("agentwrit_launch_tokens_created_total"))
	require.Greater(t, e.metric("agentwrit_audit_events_total"), 0.0)
	require.Greater(t, e.metric("agentwrit_audit_write_duration_seconds_count"), 0.0)
	_, tok2 := e.agent("read:orders:2")
	require.Equal(t, 2.0, e.metric("agentwrit_active_agents"), "agents holding a live token")

	require.NoError(t, e.load(e.caddyfile(gatewayRules+"\t\trequire GET /more/{id} read:more:{id}\n")))
	resp, _ = call(t, "GET", e.gatewayURL("/orders/1"), tok, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = call(t, "GET", e.gatewayURL("/orders/1"), "", nil)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.Equal(t, 2.0, e.metric("agentwrit_gateway_decisions_total", `result="allow"`, `reason="ok"`), "counting on after a reload")
	require.Equal(t, 1.0, e.metric("agentwrit_gateway_decisions_total", `result="deny"`, `reason="missing_token"`))
	require.Equal(t, 2.0, e.metric("agentwrit_registrations_total", `status="success"`), "the first config's registrations, still counted")
	require.Equal(t, 2.0, e.metric("agentwrit_active_agents"), "right after a reload")
	resp, _ = call(t, "POST", e.brokerURL("/v1/token/release"), tok, nil)
	require.Equal(t, http.StatusNoContent, resp.StatusCode)
	require.Equal(t, 1.0, e.metric("agentwrit_tokens_revoked_total", `level="release"`))
	require.Equal(t, 1.0, e.metric("agentwrit_active_agents"), "kept current")

	// The broker's own /v1/metrics serves the same registry.
	resp, m := call(t, "GET", e.brokerURL("/v1/metrics"), "", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, m["_raw"], "agentwrit_tokens_revoked_total")

	// A restart: counters start over, gauges come from the database.
	e.restart(gatewayRules)
	require.Equal(t, 0.0, e.metric("agentwrit_registrations_total", `status="success"`))
	require.Equal(t, 1.0, e.metric("agentwrit_active_agents"), "right after a restart")
	_ = tok2

}
