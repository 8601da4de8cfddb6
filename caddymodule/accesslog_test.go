package caddymodule_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// accessLogBlock is the example's access log, to a file: the filter
// deletes an access_token query parameter before the line is written.
const accessLogBlock = `	log {
		output file %s
		format filter {
			request>uri query {
				delete access_token
			}
		}
	}
`

// accessLine is what the test reads of one access log line.
type accessLine struct {
	Status  int    `json:"status"`
	UserID  string `json:"user_id"`
	Request struct {
		URI string `json:"uri"`
	} `json:"request"`
	Decision string   `json:"agentwrit_decision"`
	Rule     string   `json:"agentwrit_rule"`
	Required []string `json:"agentwrit_required"`
}

// TestAccessLog runs the gateway with Caddy's access log to a file and
// reads what it recorded: the agent as user_id and the decision, allowed
// or denied, and never a token sent in the query.
func TestAccessLog(t *testing.T) {
	e := newEnv(t, tempDB(t))
	logFile := filepath.Join(t.TempDir(), "access.log")
	cf := e.caddyfile(gatewayRules)
	proxy := strings.Index(cf, "\treverse_proxy ")
	require.Positive(t, proxy)
	cf = cf[:proxy] + strings.Replace(accessLogBlock, "%s", logFile, 1) + cf[proxy:]
	require.NoError(t, e.load(cf))

	agentID, tok := e.agent("read:orders:1")
	revokedID, revoked := e.agent("read:orders:1")
	resp, m := call(t, "POST", e.brokerURL("/v1/revoke"), e.adminToken(), map[string]string{"level": "agent", "target": revokedID})
	require.Equal(t, http.StatusOK, resp.StatusCode, m)

	resp, _ = call(t, "GET", e.gatewayURL("/orders/1"), tok, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, m = call(t, "GET", e.gatewayURL("/orders/2"), tok, nil)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	require.Equal(t, "insufficient_scope", m["error_code"])
	resp, _ = call(t, "GET", e.gatewayURL("/orders/1"), revoked, nil)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	resp, m = call(t, "GET", e.gatewayURL("/orders/1?x=1&access_token="+tok), "", nil)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Contains(t, m["detail"], "access_token")

	// Caddy writes the line after the response: wait for all four.
	var lines []accessLine
	var raw []byte
	require.Eventually(t, func() bool {
		raw, _ = os.ReadFile(logFile)
		lines = nil
		sc := bufio.NewScanner(bytes.NewReader(raw))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var l accessLine
			require.NoError(t, json.Unmarshal(sc.Bytes(), &l), sc.Text())
			lines = append(lines, l)
		}
		return len(lines) >= 4
	}, 10*time.Second, 20*time.Millisecond)
	require.Len(t, lines, 4, string(raw))

	allowed, scope, gone, query := lines[0], lines[1], lines[2], lines[3]
	require.Equal(t, 200, allowed.Status)
	require.Equal(t, agentID, allowed.UserID)
	require.Equal(t, "allow:ok", allowed.Decision)
	require.Contains(t, allowed.Rule, "/orders/{id}")
	require.Equal(t, []string{"read:orders:1"}, allowed.Required)

	require.Equal(t, 403, scope.Status)
	require.Equal(t, agentID, scope.UserID, "a denied agent is named too")
	require.Equal(t, "deny:insufficient_scope", scope.Decision)
	require.Equal(t, []string{"read:orders:2"}, scope.Required)

	require.Equal(t, 401, gone.Status)
	require.Equal(t, revokedID, gone.UserID, "a revoked token's claims still name the agent")
	require.Equal(t, "deny:revoked", gone.Decision)

	require.Equal(t, 400, query.Status)
	require.Equal(t, "deny:token_in_query", query.Decision)
	require.Empty(t, query.UserID, "the token was not validated")
	require.Equal(t, "/orders/1?x=1", query.Request.URI, "the filter deleted access_token")

	// No token, from any of the four requests, is anywhere in the file.
	for _, secret := range []string{tok, revoked} {
		require.NotContains(t, string(raw), secret)
		require.NotContains(t, string(raw), secret[strings.LastIndexByte(secret, '.')+1:], "nor its signature")
	}
}
