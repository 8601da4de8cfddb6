package caddymodule_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	awclient "github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// TestUsageEmbedded: granted read and write on orders, the agent only
// reads; with a reload and a restart among its requests, the report counts
// every read, names both identifiers, marks write as never used, and
// suggests the grant without it.
func TestUsageEmbedded(t *testing.T) {
	e := newEnv(t, tempDB(t))
	e.start(gatewayRules)
	agentID, tok := e.agent("read:orders:*", "write:orders:*")

	read := func(n int) {
		for i := range n {
			id := []string{"42", "43"}[i%2]
			resp, _ := call(t, "GET", e.gatewayURL("/orders/"+id), tok, nil)
			require.Equal(t, http.StatusOK, resp.StatusCode)
		}
	}
	read(4)
	require.NoError(t, e.load(e.caddyfile(gatewayRules+"\t\tunmapped deny\n")), "reload")
	read(4)
	e.restart(gatewayRules)
	read(2)

	g := usageOf(t, e, agentID, 10)

	r := grant(g, "read:orders:*")
	require.True(t, r.Used)
	require.ElementsMatch(t, []string{"42", "43"}, r.Identifiers)
	w := grant(g, "write:orders:*")
	require.False(t, w.Used)
	require.Zero(t, w.Count)
	require.NotContains(t, g.Suggested, "write:orders:*")
	require.ElementsMatch(t, []string{"read:orders:42", "read:orders:43"}, g.Suggested)
}

// TestUsageRemote: the same through a remote gateway in verify local mode,
// which reports to the broker as its app (read:revocations:* and
// write:usage:* in the app's ceiling), across a reload.
func TestUsageRemote(t *testing.T) {
	e := newEnv(t, tempDB(t))
	e.start(gatewayRules)
	resp, app := call(t, "POST", e.brokerURL("/v1/admin/apps"), e.adminToken(),
		map[string]any{"name": "gateway", "scopes": []string{broker.FeedScope, broker.UsageScope}})
	require.Equal(t, 201, resp.StatusCode, app)
	t.Setenv("AGENTWRIT_GATEWAY_CLIENT_ID", app["client_id"].(string))
	t.Setenv("AGENTWRIT_GATEWAY_CLIENT_SECRET", app["client_secret"].(string))
	remote := e.caddyfile(localGatewayBlock(e.brokerURL("")) + gatewayRules)
	require.NoError(t, e.load(remote))
	agentID, tok := e.agent("read:orders:*", "write:orders:*")
	synced := pollStatus(t, e.gatewayURL("/orders/42"), tok, 200, 20*time.Second, 503) // until the feed has synchronized
	t.Logf("the gateway allowed %s after the agent registered", synced.Round(time.Millisecond))

	read := func(n int) {
		for i := range n {
			resp, _ := call(t, "GET", e.gatewayURL("/orders/"+[]string{"43", "42"}[i%2]), tok, nil)
			require.Equal(t, http.StatusOK, resp.StatusCode)
		}
	}
	read(4) // with the one above: 5
	require.NoError(t, e.load(remote), "reload (forced, so the handlers are provisioned anew)")
	pollStatus(t, e.gatewayURL("/healthz"), "", 200, 5*time.Second)
	read(5)

	g := usageOf(t, e, agentID, 10)
	require.ElementsMatch(t, []string{"42", "43"}, grant(g, "read:orders:*").Identifiers)
	require.False(t, grant(g, "write:orders:*").Used)
	require.ElementsMatch(t, []string{"read:orders:42", "read:orders:43"}, g.Suggested)
}

// usageOf waits until the report counts reads of read:orders:* for the
// agent (recorders flush every 5 s) and returns its group.
func usageOf(t *testing.T, e *env, agentID string, reads int64) broker.UsageGroup {
	t.Helper()
	c, err := awclient.New(e.brokerURL(""), awclient.WithHTTPClient(client))
	require.NoError(t, err)
	admin, err := c.LoginAdmin(context.Background(), adminSecret)
	require.NoError(t, err)
	var g broker.UsageGroup
	require.Eventually(t, func() bool {
		rep, err := admin.Usage(context.Background(), awclient.UsageQuery{AgentID: agentID})
		require.NoError(t, err)
		if len(rep.Groups) != 1 {
			return false
		}
		g = rep.Groups[0]
		return grant(g, "read:orders:*").Count >= reads
	}, 20*time.Second, 200*time.Millisecond)
	require.Equal(t, reads, grant(g, "read:orders:*").Count, "counted once each")
	return g
}

// grant is the usage of one granted scope in g.
func grant(g broker.UsageGroup, scope string) broker.GrantUsage {
	for _, u := range g.Grants {
		if u.Scope == scope {
			return u
		}
	}
	return broker.GrantUsage{}
}
