package broker

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestAgentLifecycle walks the happy path an AgentWrit SDK takes.
func TestAgentLifecycle(t *testing.T) {
	e := newTestEnv(t)
	id, tok := e.agent("read:data:x")
	require.Regexp(t, `^spiffe://agentwrit\.local/agent/orch-1/task-1/[0-9a-f]{16}$`, id)

	rec := e.do("POST", "/v1/token/validate", "", map[string]string{"token": tok})
	require.Equal(t, http.StatusOK, rec.Code)
	m := decode(t, rec)
	require.Equal(t, true, m["valid"])
	claims := m["claims"].(map[string]any)
	require.Equal(t, id, claims["sub"])
	require.Equal(t, "", claims["iss"])

	rec = e.do("POST", "/v1/token/renew", tok, nil)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	renewed := decode(t, rec)["access_token"].(string)
	_, err := e.broker.Verify(context.Background(), tok)
	require.ErrorIs(t, err, ErrRevoked)

	rec = e.do("POST", "/v1/token/release", renewed, nil)
	require.Equal(t, http.StatusNoContent, rec.Code)
	rec = e.do("POST", "/v1/token/release", renewed, nil)
	requireProblem(t, rec, http.StatusUnauthorized, "unauthorized", "token verification failed")

	require.NoError(t, e.verifyAudit())
}
