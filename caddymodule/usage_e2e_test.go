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

	c, err := awclient.New(e.brokerURL(""), awclient.WithHTTPClient(client))
	require.NoError(t, err)
	admin, err := c.LoginAdmin(context.Background(), adminSecret)
	require.NoError(t, err)
	var g broker.UsageGroup
	require.Eventually(t, func() bool { // the recorder flushes every 5 s
		rep, err := admin.Usage(context.Background(), awclient.UsageQuery{AgentID: agentID})
		require.NoError(t, err)
		if len(rep.Groups) != 1 {
			return false
		}
		g = rep.Groups[0]
		return grant(g, "read:orders:*").Count == 10
	}, 20*time.Second, 200*time.Millisecond)

	r := grant(g, "read:orders:*")
	require.True(t, r.Used)
	require.ElementsMatch(t, []string{"42", "43"}, r.Identifiers)
	w := grant(g, "write:orders:*")
	require.False(t, w.Used)
	require.Zero(t, w.Count)
	require.NotContains(t, g.Suggested, "write:orders:*")
	require.ElementsMatch(t, []string{"read:orders:42", "read:orders:43"}, g.Suggested)
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
