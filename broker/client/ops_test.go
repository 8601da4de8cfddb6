package client_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/client"
)

// TestOperatorRoutes: status, keys, agents, server-side verification and
// usage, through the client.
func TestOperatorRoutes(t *testing.T) {
	ctx := context.Background()
	s := brokertest.New(t, brokertest.Options{})
	admin := s.Admin(t)
	a := s.Agent(t, "read:orders:*")

	st, err := admin.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, "ok", st.Status)
	require.EqualValues(t, 1, st.LiveAgents)

	keys, err := admin.Keys(ctx)
	require.NoError(t, err)
	require.Len(t, keys.Keys, 1)
	k, err := admin.RotateKey(ctx)
	require.NoError(t, err)
	require.Equal(t, broker.KeyActive, k.State)
	keys, err = admin.Keys(ctx)
	require.NoError(t, err)
	require.Equal(t, k.KID, keys.Keys[0].KID)

	list, err := admin.Agents(ctx, client.AgentQuery{Query: "/agent/"})
	require.NoError(t, err)
	require.Equal(t, 1, list.Total)
	require.Equal(t, a.ID, list.Agents[0].AgentID)

	v, err := admin.VerifyAudit(ctx)
	require.NoError(t, err)
	require.True(t, v.Intact)

	creds, err := admin.CreateApp(ctx, broker.AppRequest{Name: "gateway", Scopes: []string{broker.UsageScope}})
	require.NoError(t, err)
	gw, err := s.Client(t).LoginApp(ctx, creds.ClientID, creds.ClientSecret)
	require.NoError(t, err)
	now := time.Now().UTC()
	require.NoError(t, gw.ReportUsage(ctx, broker.UsageBatch{Records: []broker.UsageRecord{{Hour: now, AgentID: a.ID,
		Rule: "require GET /orders/{id} read:orders:{id}", Required: "read:orders:1", Granted: "read:orders:*",
		Result: broker.UsageAllowed, Count: 3, First: now, Last: now}}}))
	rep, err := admin.Usage(ctx, client.UsageQuery{AgentID: a.ID, Since: now.Add(-time.Hour)})
	require.NoError(t, err)
	require.Len(t, rep.Groups, 1)
	require.EqualValues(t, 3, rep.Groups[0].Grants[0].Count)
	require.Equal(t, []string{"read:orders:1"}, rep.Groups[0].Suggested)
	require.True(t, client.IsStatus(admin.ReportUsage(ctx, broker.UsageBatch{}), 403), "admins do not report usage")
}
