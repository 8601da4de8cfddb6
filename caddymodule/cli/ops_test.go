package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

func TestCommandLogin(t *testing.T) {
	tb := newCmdTestBroker(t)
	r := tb.admin("login")
	requireOK(t, r)
	tok := strings.TrimSpace(r.Stdout)
	require.Contains(t, r.Stderr, "admin token valid for")
	require.Len(t, strings.Split(tok, "."), 3, "a JWT on stdout, nothing else")

	// The token stands in for the secret.
	t.Setenv(envAdminToken, tok)
	t.Setenv(envAdminSecret, "")
	r = runCmd(t, "", "status", "--broker", tb.URL)
	requireOK(t, r)

	// A wrong secret is refused, and nothing is printed.
	r = runCmd(t, "", "login", "--broker", tb.URL, "--admin-secret", "wrong")
	require.Error(t, r.Err)
	require.Empty(t, r.Stdout)
}

func TestCommandStatus(t *testing.T) {
	tb := newCmdTestBroker(t)
	tb.registerAgent("read:orders:*")
	r := tb.admin("status")
	requireOK(t, r)
	for _, want := range []string{"status", "ok", "sqlite", "1 registered, 1 holding live tokens", "audit chain", "key"} {
		require.Contains(t, r.Stdout, want)
	}

	r = tb.admin("status", "--json")
	requireOK(t, r)
	var st broker.Status
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &st))
	require.Equal(t, "ok", st.Status)
	require.EqualValues(t, 1, st.LiveAgents)
	require.Len(t, st.Keys, 1)
	require.Positive(t, st.Audit.Events)
}

func TestCommandKeys(t *testing.T) {
	tb := newCmdTestBroker(t)
	r := tb.admin("keys", "list", "--json")
	requireOK(t, r)
	var before broker.KeyList
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &before))
	require.Len(t, before.Keys, 1)
	old := before.Keys[0].KID

	r = tb.admin("keys", "rotate")
	requireOK(t, r)
	require.Contains(t, r.Stdout, "new active key ")
	kid := strings.TrimPrefix(strings.TrimSpace(r.Stdout), "new active key ")
	require.NotEqual(t, old, kid)

	r = tb.admin("keys", "list")
	requireOK(t, r)
	require.Contains(t, r.Stdout, kid+"  active")
	require.Regexp(t, old+`\s+retiring`, r.Stdout, "the old key still verifies its tokens")

	r = tb.admin("audit", "--event-type", "key_rotated", "--json")
	requireOK(t, r)
	require.Contains(t, r.Stdout, kid)
}

func TestCommandAgents(t *testing.T) {
	tb := newCmdTestBroker(t)
	_, id := tb.registerAgent("read:orders:*")
	r := tb.admin("agents")
	requireOK(t, r)
	require.Contains(t, r.Stdout, id)
	require.Contains(t, r.Stdout, "read:orders:*")
	require.Contains(t, r.Stderr, "1 of 1 agents")

	r = tb.admin("agents", "--task-id", "no-such-task", "--json")
	requireOK(t, r)
	var list broker.AgentList
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &list))
	require.Empty(t, list.Agents)
}

func TestCommandUsage(t *testing.T) {
	tb := newCmdTestBroker(t)
	_, id := tb.registerAgent("read:orders:*", "write:orders:*")

	// A gateway reports what it saw, as a remote gateway does.
	app, err := tb.Admin(t).CreateApp(t.Context(), broker.AppRequest{Name: "gw", Scopes: []string{broker.UsageScope}})
	require.NoError(t, err)
	gw, err := tb.Client(t).LoginApp(t.Context(), app.ClientID, app.ClientSecret)
	require.NoError(t, err)
	now := time.Now().UTC()
	require.NoError(t, gw.ReportUsage(context.Background(), broker.UsageBatch{Records: []broker.UsageRecord{{
		Hour: now, AgentID: id, TaskID: "task-1", OrchID: "orch-1", Rule: "GET /orders/{id}",
		Required: "read:orders:42", Granted: "read:orders:*", Result: broker.UsageAllowed, Count: 3, First: now, Last: now,
	}}}))

	r := tb.admin("usage")
	requireOK(t, r)
	require.Contains(t, r.Stdout, "agent "+id)
	require.Regexp(t, `read:orders:\*\s+yes\s+3`, r.Stdout)
	require.Regexp(t, `write:orders:\*\s+never\s+0`, r.Stdout)
	require.Contains(t, r.Stdout, "suggested grant: read:orders:42")

	r = tb.admin("usage", "--unused", "--json")
	requireOK(t, r)
	var rep broker.UsageReport
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &rep))
	require.Len(t, rep.Groups, 1)

	r = tb.admin("usage", "--since", "yesterday")
	require.Error(t, r.Err)
	r = tb.admin("usage", "--group-by", "planet")
	require.ErrorContains(t, r.Err, "group_by")
}
