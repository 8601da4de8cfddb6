package storagetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// testUsage: usage records add up under their keys, sum over a range with
// the agent's app and launch token, and prune by hour; decision counts
// add up per minute.
func testUsage(t *testing.T, h Harness) {
	dbs := handles(t, h, 2)
	db := dbs[0]
	r := registration("spiffe://t/agent/o/t/1", "")
	r.Agent.AppID, r.Agent.LaunchToken, r.Agent.AgentName, r.Agent.LaunchScope = "app-x-123456", "lt-hash", "reader", []string{"read:orders:*"}
	require.NoError(t, db.Register(ctx(), r))
	vs, _, err := db.Agents(ctx(), broker.AgentFilter{Now: now})
	require.NoError(t, err)
	require.Equal(t, "reader", vs[0].AgentName)
	require.Equal(t, []string{"read:orders:*"}, vs[0].LaunchScope)

	hour := now.Truncate(time.Hour)
	rec := func(h time.Time, required, result string, n int64, first, last time.Time) broker.UsageRecord {
		return broker.UsageRecord{Hour: h, AgentID: r.Agent.ID, TaskID: "t", OrchID: "o", Rule: "require GET /orders/{id} read:orders:{id}",
			Required: required, Granted: "read:orders:*", Result: result, Count: n, First: first, Last: last}
	}
	minute := now.Truncate(time.Minute)
	require.NoError(t, db.AddUsage(ctx(), []broker.UsageRecord{
		rec(hour, "read:orders:42", broker.UsageAllowed, 3, now, now.Add(time.Second)),
		rec(hour, "read:orders:43", broker.UsageAllowed, 1, now, now),
	}, []broker.DecisionCount{{Minute: minute, Result: "allow", Reason: "ok", Count: 4}}))
	// A second replica adds to the same keys.
	require.NoError(t, dbs[1].AddUsage(ctx(), []broker.UsageRecord{
		rec(hour, "read:orders:42", broker.UsageAllowed, 2, now.Add(-time.Second), now.Add(2*time.Second)),
		rec(hour.Add(-2*time.Hour), "read:orders:42", broker.UsageAllowed, 5, now.Add(-2*time.Hour), now.Add(-2*time.Hour)),
	}, []broker.DecisionCount{{Minute: minute, Result: "allow", Reason: "ok", Count: 2}, {Minute: minute, Result: "deny", Reason: "missing_token", Count: 1}}))

	rows, err := db.QueryUsage(ctx(), broker.UsageFilter{Since: now.Add(-time.Hour)})
	require.NoError(t, err)
	require.Len(t, rows, 2)
	require.Equal(t, "read:orders:42", rows[0].Required)
	require.EqualValues(t, 5, rows[0].Count, "3 + 2 from the other replica; the older hour is out of range")
	require.True(t, rows[0].First.Equal(now.Add(-time.Second)))
	require.True(t, rows[0].Last.Equal(now.Add(2*time.Second)))
	require.Equal(t, "app-x-123456", rows[0].AppID)
	require.Equal(t, "lt-hash", rows[0].LaunchToken)
	all, err := db.QueryUsage(ctx(), broker.UsageFilter{AppID: "app-x-123456", Scope: "read:orders:42"})
	require.NoError(t, err)
	require.Len(t, all, 1)
	require.EqualValues(t, 10, all[0].Count, "all hours")
	none, err := db.QueryUsage(ctx(), broker.UsageFilter{AgentID: "spiffe://t/agent/o/t/none"})
	require.NoError(t, err)
	require.Empty(t, none)

	dec, err := db.Decisions(ctx(), minute)
	require.NoError(t, err)
	require.Equal(t, []broker.DecisionCount{
		{Minute: minute, Result: "allow", Reason: "ok", Count: 6},
		{Minute: minute, Result: "deny", Reason: "missing_token", Count: 1},
	}, dec)

	require.NoError(t, db.PruneUsage(ctx(), hour, minute.Add(time.Minute)))
	all, err = db.QueryUsage(ctx(), broker.UsageFilter{})
	require.NoError(t, err)
	require.Len(t, all, 2, "the older hour is gone")
	dec, err = db.Decisions(ctx(), time.Time{})
	require.NoError(t, err)
	require.Empty(t, dec)
}
