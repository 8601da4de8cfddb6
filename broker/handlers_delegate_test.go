package broker

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRoute_Delegate_Success(t *testing.T) {
	e := newTestEnv(t)
	from, tok := e.mkAgent(600, "read:data:x", "read:data:y")
	to, _ := e.mkAgent(0, "read:data:z")

	rec := e.do("POST", "/v1/delegate", tok, map[string]any{"delegate_to": to, "scope": []string{"read:data:x"}})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, []string{"access_token", "expires_in", "delegation_chain"}, jsonKeys(t, rec.Body.Bytes()))
	m := decode(t, rec)
	require.Equal(t, float64(60), m["expires_in"], "default delegation ttl is 60")

	var chain []DelegRecord
	require.NoError(t, json.Unmarshal(rawField(t, rec.Body.Bytes(), "delegation_chain"), &chain))
	require.Len(t, chain, 1)
	var recs []json.RawMessage
	require.NoError(t, json.Unmarshal(rawField(t, rec.Body.Bytes(), "delegation_chain"), &recs))
	require.Equal(t, []string{"agent", "scope", "delegated_at", "signature"}, jsonKeys(t, recs[0]))
	r0 := chain[0]
	require.Equal(t, from, r0.Agent)
	require.Equal(t, []string{"read:data:x", "read:data:y"}, r0.Scope, "the delegator's full scope")
	at, err := time.Parse(time.RFC3339Nano, r0.DelegatedAt)
	require.NoError(t, err)
	require.Equal(t, at.UTC().Format(time.RFC3339Nano), r0.DelegatedAt)
	require.True(t, strings.HasSuffix(r0.DelegatedAt, "Z"))
	require.Regexp(t, `^[0-9a-f]{128}$`, r0.Signature)
	sig, _ := hex.DecodeString(r0.Signature)
	require.True(t, ed25519.Verify(e.broker.PublicKey(), []byte(r0.Agent+"|read:data:x,read:data:y|"+r0.DelegatedAt), sig))

	dtok := m["access_token"].(string)
	c := claimsOf(t, dtok)
	require.Equal(t, to, c["sub"])
	require.Equal(t, []any{"read:data:x"}, c["scope"])
	require.Equal(t, "task-1", c["task_id"], "the delegator's task")
	require.Equal(t, "orch-1", c["orch_id"])
	require.Equal(t, []string{"iss", "sub", "exp", "nbf", "iat", "jti", "scope", "task_id", "orch_id", "delegation_chain", "chain_hash"}, payloadKeys(t, dtok))
	rawChain, _ := json.Marshal(chain)
	sum := sha256.Sum256(rawChain)
	require.Equal(t, hex.EncodeToString(sum[:]), c["chain_hash"])
	// The chain in the JWT is byte-identical to the response's.
	payload, _ := base64.RawURLEncoding.DecodeString(strings.Split(dtok, ".")[1])
	require.Equal(t, string(rawField(t, rec.Body.Bytes(), "delegation_chain")), string(rawField(t, payload, "delegation_chain")))

	ev := e.lastEvent(EventDelegationCreated)
	require.Equal(t, fmt.Sprintf("delegation from %s to %s scope=[read:data:x] depth=1", from, to), ev.Detail)
	require.Equal(t, to, ev.AgentID)
	require.Equal(t, "task-1", ev.TaskID)
	require.Equal(t, "orch-1", ev.OrchID)
	require.Equal(t, 1, ev.DelegDepth)
	require.Equal(t, c["chain_hash"], ev.DelegChainHash)
	require.Equal(t, OutcomeSuccess, ev.Outcome)

	// Equal scope is allowed, an explicit ttl is honoured, self-delegation works.
	rec = e.do("POST", "/v1/delegate", tok, map[string]any{"delegate_to": from, "scope": []string{"read:data:y", "read:data:x"}, "ttl": 90})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, float64(90), decode(t, rec)["expires_in"])
}

func TestRoute_Delegate_DepthAndErrors(t *testing.T) {
	e := newTestEnv(t)
	ids := make([]string, 7)
	toks := make([]string, 7)
	for i := range ids {
		ids[i], toks[i] = e.mkAgent(0, "read:data:x")
	}
	// Five successive delegations succeed, the sixth fails.
	cur := toks[0]
	for i := 1; i <= 5; i++ {
		rec := e.do("POST", "/v1/delegate", cur, map[string]any{"delegate_to": ids[i], "scope": []string{"read:data:x"}})
		require.Equal(t, http.StatusOK, rec.Code, "hop %d: %s", i, rec.Body.String())
		m := decode(t, rec)
		require.Len(t, m["delegation_chain"], i)
		require.Equal(t, ids[i-1], m["delegation_chain"].([]any)[i-1].(map[string]any)["agent"])
		require.Equal(t, ids[0], m["delegation_chain"].([]any)[0].(map[string]any)["agent"])
		cur = m["access_token"].(string)
	}
	require.Equal(t, 5, e.lastEvent(EventDelegationCreated).DelegDepth)
	requireProblem(t, e.do("POST", "/v1/delegate", cur, map[string]any{"delegate_to": ids[6], "scope": []string{"read:data:x"}}),
		403, "scope_violation", "delegation depth limit exceeded")

	// Attenuation.
	requireProblem(t, e.do("POST", "/v1/delegate", toks[1], map[string]any{"delegate_to": ids[2], "scope": []string{"read:data:*"}}),
		403, "scope_violation", "delegated scope exceeds delegator scope")
	ev := e.lastEvent(EventDelegationAttenuation)
	require.Equal(t, fmt.Sprintf("delegation_attenuation_violation | delegator=%s | target=%s | requested=[read:data:*] | allowed=[read:data:x]", ids[1], ids[2]), ev.Detail)
	require.Equal(t, ids[1], ev.AgentID)
	require.Equal(t, "task-1", ev.TaskID)
	require.Equal(t, OutcomeDenied, ev.Outcome)
	require.Zero(t, ev.DelegDepth)
	// From a delegated token the event carries the current depth.
	requireProblem(t, e.do("POST", "/v1/delegate", cur, map[string]any{"delegate_to": ids[6], "scope": []string{"write:data:x"}}),
		403, "scope_violation", "delegation depth limit exceeded")
	dtok := decode(t, e.do("POST", "/v1/delegate", toks[0], map[string]any{"delegate_to": ids[1], "scope": []string{"read:data:x"}}))["access_token"].(string)
	requireProblem(t, e.do("POST", "/v1/delegate", dtok, map[string]any{"delegate_to": ids[2], "scope": []string{"write:data:x"}}),
		403, "scope_violation", "delegated scope exceeds delegator scope")
	require.Equal(t, 1, e.lastEvent(EventDelegationAttenuation).DelegDepth)
	// D15: a malformed requested scope is a 400 naming it (upstream: 403).
	requireProblem(t, e.do("POST", "/v1/delegate", toks[1], map[string]any{"delegate_to": ids[2], "scope": []string{"bogus"}}),
		400, "invalid_request", `invalid scope format: use action:resource:identifier: invalid scope "bogus": no ':', want action:resource:identifier`)

	requireProblem(t, e.do("POST", "/v1/delegate", toks[1], map[string]any{"delegate_to": "spiffe://agentwrit.local/agent/o/t/ffffffffffffffff", "scope": []string{"read:data:x"}}),
		404, "not_found", "delegate agent not found")
	requireProblem(t, e.do("POST", "/v1/delegate", toks[1], nil), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, e.do("POST", "/v1/delegate", toks[1], `{"delegate_to":"x","scope":"read:data:x"}`), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, e.do("POST", "/v1/delegate", toks[1], `{"delegate_to":"x","scope":["read:data:x"],"ttl":30.5}`), 400, "invalid_request", "malformed JSON body")
	requireBearerErrors(t, e, "POST", "/v1/delegate")
}

// --- 10.8 POST /v1/token/release ---
