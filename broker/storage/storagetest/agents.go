package storagetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// testAgents: listing agents with their live tokens, and the counts.
func testAgents(t *testing.T, h Harness) {
	db, _ := h.Fresh(t)
	reg := func(id, task string, at time.Time, exp time.Duration) *broker.Registration {
		r := registration(id, "")
		r.Agent.TaskID, r.Token.TaskID, r.Agent.RegisteredAt = task, task, at
		r.Token.ExpiresAt = now.Add(exp)
		require.NoError(t, db.Register(ctx(), r))
		return r
	}
	a := reg("spiffe://t/agent/o/alpha/1", "alpha", now, time.Minute)
	b := reg("spiffe://t/agent/o/beta/2", "beta", now.Add(time.Second), time.Minute)
	reg("spiffe://t/agent/o/beta/3", "beta", now.Add(2*time.Second), -time.Second) // expired
	d := reg("spiffe://t/agent/o/alpha/4", "alpha", now.Add(3*time.Second), time.Minute)
	_, err := db.Revoke(ctx(), broker.LevelToken, d.Token.JTI, now)
	require.NoError(t, err)
	// A token delegated to alpha/1 from beta/2, killed at chain level.
	del := broker.TokenRecord{JTI: "delegated", Subject: a.Agent.ID, Parent: b.Token.JTI, TaskID: "beta", OrchID: "o",
		Scope: []string{"read:data:x"}, Depth: 1, Root: b.Agent.ID, IssuedAt: now, ExpiresAt: now.Add(time.Minute)}
	require.NoError(t, db.SaveToken(ctx(), &del))
	admin := broker.TokenRecord{JTI: "admin-jti", Subject: "admin", Scope: []string{"admin:audit:*"}, IssuedAt: now, ExpiresAt: now.Add(time.Minute)}
	require.NoError(t, db.SaveToken(ctx(), &admin))

	st, err := db.Stats(ctx(), now)
	require.NoError(t, err)
	require.Equal(t, broker.Stats{Agents: 4, LiveAgents: 2, LiveTokens: 4, Revocations: 1}, st, "admin's token is live but not an agent's")

	ids := func(f broker.AgentFilter) ([]string, int) {
		f.Now = now
		vs, n, err := db.Agents(ctx(), f)
		require.NoError(t, err)
		out := []string{}
		for _, v := range vs {
			out = append(out, v.ID)
		}
		return out, n
	}
	got, n := ids(broker.AgentFilter{})
	require.Equal(t, []string{"spiffe://t/agent/o/alpha/4", "spiffe://t/agent/o/beta/3", b.Agent.ID, a.Agent.ID}, got, "newest first")
	require.Equal(t, 4, n)
	got, n = ids(broker.AgentFilter{Live: true})
	require.Equal(t, []string{b.Agent.ID, a.Agent.ID}, got)
	require.Equal(t, 2, n)
	got, _ = ids(broker.AgentFilter{TaskID: "beta", Limit: 1})
	require.Equal(t, []string{"spiffe://t/agent/o/beta/3"}, got)
	got, n = ids(broker.AgentFilter{Query: "ha/", Offset: 1})
	require.Equal(t, []string{a.Agent.ID}, got)
	require.Equal(t, 2, n)
	got, _ = ids(broker.AgentFilter{Query: "%"})
	require.Empty(t, got, "the query is a substring, not a pattern")

	vs, _, err := db.Agents(ctx(), broker.AgentFilter{Query: "alpha/1", Now: now})
	require.NoError(t, err)
	require.Len(t, vs, 1)
	require.Equal(t, []string{"read:data:x"}, vs[0].Scope)
	require.True(t, vs[0].RegisteredAt.Equal(now))
	require.Len(t, vs[0].Tokens, 2, "its own token and the one delegated to it")

	_, err = db.Revoke(ctx(), broker.LevelChain, b.Agent.ID, now)
	require.NoError(t, err)
	vs, _, err = db.Agents(ctx(), broker.AgentFilter{Query: "alpha/1", Now: now})
	require.NoError(t, err)
	require.Len(t, vs[0].Tokens, 1, "the delegated token died with its chain")
	require.Equal(t, a.Token.JTI, vs[0].Tokens[0].JTI)
	_, err = db.Revoke(ctx(), broker.LevelTask, "alpha", now)
	require.NoError(t, err)
	st, err = db.Stats(ctx(), now)
	require.NoError(t, err)
	require.Equal(t, broker.Stats{Agents: 4, LiveAgents: 1, LiveTokens: 2, Revocations: 3}, st)
}
