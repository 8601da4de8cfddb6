package broker

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// Per-route contract tests (docs/api.md): success bodies with their
// exact field names and order, and every error status, error_code and
// detail. Departures D1–D14 have their own tests in departures_test.go.

const hex64 = `^[0-9a-f]{64}$`

// --- 10.1 GET /v1/challenge ---

func TestRoute_Challenge(t *testing.T) {
	e := newTestEnv(t)
	rec := e.do("GET", "/v1/challenge", "", nil)
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	require.Equal(t, []string{"nonce", "expires_in"}, jsonKeys(t, rec.Body.Bytes()))
	m := decode(t, rec)
	require.Regexp(t, hex64, m["nonce"])
	require.Regexp(t, `^\{"nonce":"[0-9a-f]{64}","expires_in":30\}\n$`, rec.Body.String())
	// Every challenge is new.
	require.NotEqual(t, m["nonce"], decode(t, e.do("GET", "/v1/challenge", "", nil))["nonce"])
	require.Zero(t, e.auditCount(), "challenge emits no audit event")
}

// --- 10.2 GET /v1/health ---

func TestRoute_Health(t *testing.T) {
	clk := newTestClock()
	e := newTestEnv(t, withClock(clk))
	e.adminToken() // one audit event
	clk.Advance(42 * time.Second)
	rec := e.do("GET", "/v1/health", "", nil)
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	require.Equal(t, `{"status":"ok","version":"2.0.0","uptime":42,"db_connected":true,"audit_events_count":1}`+"\n", rec.Body.String())
	requireSecurityHeaders(t, rec)
	require.Equal(t, 1, e.auditCount(), "health emits no audit event")
}

// --- 10.3 GET /v1/metrics ---

func TestRoute_Metrics(t *testing.T) {
	e := newTestEnv(t)
	rec := e.do("GET", "/v1/metrics", "", nil)
	require.Equal(t, http.StatusOK, rec.Code)
	require.True(t, strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain; version=0.0.4"), rec.Header().Get("Content-Type"))
	require.Equal(t, "no-store", rec.Header().Get("Cache-Control"))

	// The embedding program's handler serves the exposition.
	e = newTestEnv(t, func(c *Config) {
		c.MetricsHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
			fmt.Fprintln(w, "agentwrit_active_agents 0")
		})
	})
	rec = e.do("GET", "/v1/metrics", "", nil)
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "agentwrit_active_agents 0\n", rec.Body.String())
	require.Equal(t, "no-store", rec.Header().Get("Cache-Control"))
}

// --- 10.4 POST /v1/token/validate ---

func TestRoute_Validate(t *testing.T) {
	e := newTestEnv(t)
	id, tok := e.mkAgent(0, "read:data:x")

	rec := e.do("POST", "/v1/token/validate", "", map[string]string{"token": tok})
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	require.Equal(t, []string{"valid", "claims"}, jsonKeys(t, rec.Body.Bytes()))
	claims := rawField(t, rec.Body.Bytes(), "claims")
	require.Equal(t, []string{"iss", "sub", "exp", "nbf", "iat", "jti", "scope", "task_id", "orch_id"}, jsonKeys(t, claims))
	var c map[string]any
	require.NoError(t, json.Unmarshal(claims, &c))
	require.Equal(t, id, c["sub"])
	require.Equal(t, "", c["iss"])
	require.Equal(t, []any{"read:data:x"}, c["scope"])
	require.Equal(t, "task-1", c["task_id"])
	require.Equal(t, "orch-1", c["orch_id"])
	require.Regexp(t, `^[0-9a-f]{32}$`, c["jti"])
	require.Equal(t, c["iat"], c["nbf"])
	require.Equal(t, float64(300), c["exp"].(float64)-c["iat"].(float64))

	// Decoding leniency: case-insensitive names, trailing bytes ignored.
	rec = e.do("POST", "/v1/token/validate", "", `{"TOKEN":"`+tok+`"} garbage`)
	require.Equal(t, true, decode(t, rec)["valid"])

	invalid := `{"valid":false,"error":"token is invalid or expired"}` + "\n"
	sigAt := strings.LastIndexByte(tok, '.') + 1
	flip := byte('A')
	if tok[sigAt] == 'A' {
		flip = 'B'
	}
	for name, bad := range map[string]string{
		"garbage":   "not-a-token",
		"tampered":  tok[:sigAt] + string(flip) + tok[sigAt+1:],
		"two parts": tok[:strings.LastIndexByte(tok, '.')],
	} {
		rec = e.do("POST", "/v1/token/validate", "", map[string]string{"token": bad})
		require.Equal(t, http.StatusOK, rec.Code, name)
		require.Equal(t, invalid, rec.Body.String(), name)
	}

	// Revoked and expired tokens are invalid too, still with 200.
	_, tok2 := e.mkAgent(0, "read:data:x")
	require.NoError(t, e.revoke(LevelToken, claimsOf(t, tok2)["jti"].(string)))
	rec = e.do("POST", "/v1/token/validate", "", map[string]string{"token": tok2})
	require.Equal(t, invalid, rec.Body.String())

	clk := newTestClock()
	e2 := newTestEnv(t, withClock(clk))
	old := e2.issueToken(Claims{Sub: "spiffe://agentwrit.local/agent/o/t/0123456789abcdef", Scope: []string{"read:data:x"}}, 10)
	clk.Advance(10 * time.Second) // now == exp: still valid
	require.Equal(t, true, decode(t, e2.do("POST", "/v1/token/validate", "", map[string]string{"token": old}))["valid"])
	clk.Advance(time.Second)
	require.Equal(t, invalid, e2.do("POST", "/v1/token/validate", "", map[string]string{"token": old}).Body.String())

	// Errors.
	requireProblem(t, e.do("POST", "/v1/token/validate", "", nil), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, e.do("POST", "/v1/token/validate", "", `{"token":`), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, e.do("POST", "/v1/token/validate", "", `{"token":5}`), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, e.do("POST", "/v1/token/validate", "", `{}`), 400, "invalid_request", "token field is required")
	requireProblem(t, e.do("POST", "/v1/token/validate", "", `{"token":""}`), 400, "invalid_request", "token field is required")

	n := e.auditCount()
	e.do("POST", "/v1/token/validate", "", map[string]string{"token": tok})
	require.Equal(t, n, e.auditCount(), "validate emits no audit event")
}

// --- 10.5 POST /v1/register ---

func TestRoute_Register_Success(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.MaxTTL = 100 * time.Second })
	lt := e.mkLaunch(map[string]any{"allowed_scope": []string{"read:data:*", "write:data:x"}, "max_ttl": 250})
	rec := e.do("POST", "/v1/register", "", e.registration(lt, "read:data:y", "write:data:x"))
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	require.Equal(t, []string{"agent_id", "access_token", "expires_in"}, jsonKeys(t, rec.Body.Bytes()))
	m := decode(t, rec)
	id := m["agent_id"].(string)
	require.Regexp(t, `^spiffe://agentwrit\.local/agent/orch-1/task-1/[0-9a-f]{16}$`, id)
	require.Equal(t, float64(100), m["expires_in"], "max_ttl clamped by MaxTTL")
	tok := m["access_token"].(string)
	require.Equal(t, []string{"iss", "sub", "exp", "nbf", "iat", "jti", "scope", "task_id", "orch_id"}, payloadKeys(t, tok))
	c := claimsOf(t, tok)
	require.Equal(t, id, c["sub"])
	require.Equal(t, []any{"read:data:y", "write:data:x"}, c["scope"])
	require.Equal(t, float64(100), c["exp"].(float64)-c["iat"].(float64))

	ev := e.lastEvent(EventAgentRegistered)
	require.Equal(t, "Agent registered with scope [read:data:y write:data:x]", ev.Detail)
	require.Equal(t, id, ev.AgentID)
	require.Equal(t, "task-1", ev.TaskID)
	require.Equal(t, "orch-1", ev.OrchID)
	require.Equal(t, OutcomeSuccess, ev.Outcome)
	ev = e.lastEvent(EventTokenIssued)
	require.Equal(t, fmt.Sprintf("Token issued, jti=%s, ttl=250", c["jti"]), ev.Detail, "ttl is the unclamped max_ttl")
	require.Equal(t, id, ev.AgentID)
	require.Equal(t, OutcomeSuccess, ev.Outcome)

	// A single-use launch token (the default) is spent.
	requireProblem(t, e.do("POST", "/v1/register", "", e.registration(lt, "read:data:y")),
		401, "unauthorized", "launch token: launch token already consumed")

	// A multi-use one registers any number of agents, each with a new ID.
	multi := e.mkLaunch(map[string]any{"single_use": false})
	seen := map[string]bool{}
	for range 3 {
		rec := e.do("POST", "/v1/register", "", e.registration(multi, "read:data:x"))
		require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
		id := decode(t, rec)["agent_id"].(string)
		require.False(t, seen[id])
		seen[id] = true
	}
}

func TestRoute_Register_Errors(t *testing.T) {
	clk := newTestClock()
	e := newTestEnv(t, withClock(clk))
	lt := e.mkLaunch(map[string]any{"allowed_scope": []string{"read:data:*"}})

	requireProblem(t, e.do("POST", "/v1/register", "", nil), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, e.do("POST", "/v1/register", "", `{"requested_scope":"read:data:x"}`), 400, "invalid_request", "malformed JSON body")
	for _, f := range []string{"launch_token", "nonce", "public_key", "signature", "orch_id", "task_id"} {
		body := e.registration(lt)
		delete(body, f)
		requireProblem(t, e.do("POST", "/v1/register", "", body), 400, "invalid_request", "missing required field")
	}
	body := e.registration(lt)
	delete(body, "requested_scope")
	requireProblem(t, e.do("POST", "/v1/register", "", body), 400, "invalid_request", "missing required field: requested_scope")
	body["requested_scope"] = []string{}
	requireProblem(t, e.do("POST", "/v1/register", "", body), 400, "invalid_request", "missing required field: requested_scope")

	// Launch-token lookup.
	requireProblem(t, e.do("POST", "/v1/register", "", e.registration(strings.Repeat("ab", 32))),
		401, "unauthorized", "launch token: launch token not found")
	short := e.mkLaunch(map[string]any{"ttl": 5})
	clk.Advance(6 * time.Second)
	requireProblem(t, e.do("POST", "/v1/register", "", e.registration(short)),
		401, "unauthorized", "launch token: launch token expired")

	// Scope violation: audited, and neither the nonce nor the launch token is burned.
	body = e.registration(lt, "write:data:x")
	requireProblem(t, e.do("POST", "/v1/register", "", body), 403, "scope_violation", "requested scope exceeds allowed scope")
	ev := e.lastEvent(EventRegistrationViolation)
	require.Equal(t, "scope violation: requested [write:data:x] exceeds allowed [read:data:*]", ev.Detail)
	require.Equal(t, "", ev.AgentID)
	require.Equal(t, "task-1", ev.TaskID)
	require.Equal(t, "orch-1", ev.OrchID)
	require.Equal(t, OutcomeDenied, ev.Outcome)
	body["requested_scope"] = []string{"read:data:x"}
	rec := e.do("POST", "/v1/register", "", body)
	require.Equal(t, http.StatusOK, rec.Code, "same nonce and launch token still usable: %s", rec.Body.String())

	// Nonce checks.
	requireProblem(t, e.do("POST", "/v1/register", "", body), 401, "unauthorized", "launch token: launch token already consumed")
	multi := e.mkLaunch(map[string]any{"single_use": false, "ttl": 3600})
	body["launch_token"] = multi
	requireProblem(t, e.do("POST", "/v1/register", "", body), 401, "unauthorized", "nonce: nonce already consumed")
	body = e.registration(multi)
	body["nonce"] = strings.ToUpper(body["nonce"].(string))
	requireProblem(t, e.do("POST", "/v1/register", "", body), 401, "unauthorized", "nonce: nonce not found or expired")
	body = e.registration(multi)
	clk.Advance(31 * time.Second)
	requireProblem(t, e.do("POST", "/v1/register", "", body), 401, "unauthorized", "nonce: nonce not found or expired")

	// Public key and signature; from here on the nonce is burned.
	pkCases := map[string]string{
		"url-safe unpadded": base64.RawURLEncoding.EncodeToString(make([]byte, 32)),
		"not base64":        "!!!",
	}
	for name, pk := range pkCases {
		body = e.registration(multi)
		body["public_key"] = pk
		requireProblem(t, e.do("POST", "/v1/register", "", body), 401, "unauthorized", "invalid Ed25519 public key: base64 decode failed")
		requireProblem(t, e.do("POST", "/v1/register", "", body), 401, "unauthorized", "nonce: nonce already consumed")
		_ = name
	}
	body = e.registration(multi)
	body["public_key"] = base64.StdEncoding.EncodeToString(make([]byte, 31))
	requireProblem(t, e.do("POST", "/v1/register", "", body), 401, "unauthorized", "invalid Ed25519 public key: wrong key size")

	body = e.registration(multi)
	body["signature"] = "%%%"
	requireProblem(t, e.do("POST", "/v1/register", "", body), 401, "unauthorized", "nonce signature verification failed: base64 decode failed")
	body = e.registration(multi)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	nb, _ := hex.DecodeString(body["nonce"].(string))
	body["signature"] = base64.StdEncoding.EncodeToString(ed25519.Sign(other, nb))
	requireProblem(t, e.do("POST", "/v1/register", "", body), 401, "unauthorized", "nonce signature verification failed")
	// Signing the hex string instead of the decoded bytes is wrong too.
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	body = e.registration(multi)
	body["public_key"] = base64.StdEncoding.EncodeToString(pub)
	body["signature"] = base64.StdEncoding.EncodeToString(ed25519.Sign(priv, []byte(body["nonce"].(string))))
	requireProblem(t, e.do("POST", "/v1/register", "", body), 401, "unauthorized", "nonce signature verification failed")
}

// --- 10.6 POST /v1/token/renew ---

func TestRoute_Renew(t *testing.T) {
	e := newTestEnv(t)
	id, tok := e.mkAgent(120, "read:data:x")
	old := claimsOf(t, tok)

	rec := e.do("POST", "/v1/token/renew", tok, nil)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, []string{"access_token", "expires_in"}, jsonKeys(t, rec.Body.Bytes()), "no token_type")
	m := decode(t, rec)
	require.Equal(t, float64(120), m["expires_in"], "exp-iat carries forward")
	nc := claimsOf(t, m["access_token"].(string))
	require.Equal(t, id, nc["sub"])
	require.Equal(t, old["scope"], nc["scope"])
	require.Equal(t, old["task_id"], nc["task_id"])
	require.Equal(t, old["orch_id"], nc["orch_id"])
	require.NotEqual(t, old["jti"], nc["jti"])
	require.Equal(t, float64(120), nc["exp"].(float64)-nc["iat"].(float64))

	ev := e.lastEvent(EventTokenRenewed)
	require.Equal(t, "token renewed for agent="+id+" new_jti="+nc["jti"].(string), ev.Detail)
	require.Equal(t, id, ev.AgentID)
	require.Equal(t, "task-1", ev.TaskID)
	require.Equal(t, "orch-1", ev.OrchID)
	require.Equal(t, OutcomeSuccess, ev.Outcome)
	require.Empty(t, e.events(EventTokenIssued)[1:], "renewal emits no token_issued")

	// The predecessor is revoked: 401, never 403.
	requireProblem(t, e.do("POST", "/v1/token/renew", tok, nil), 401, "unauthorized", "token verification failed")

	// Admin tokens renew too, keeping their scopes.
	rec = e.do("POST", "/v1/token/renew", e.adminToken(), nil)
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, []any{"admin:launch-tokens:*", "admin:revoke:*", "admin:audit:*"}, claimsOf(t, decode(t, rec)["access_token"].(string))["scope"])

	requireBearerErrors(t, e, "POST", "/v1/token/renew")
}

// requireBearerErrors checks the bearer check's 401s on a Bearer route, with
// their token_auth_failed audit events.
func requireBearerErrors(t *testing.T, e *testEnv, method, path string) {
	t.Helper()
	send := func(auth []string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, nil)
		for _, a := range auth {
			req.Header.Add("Authorization", a)
		}
		return e.doReq(req)
	}
	check := func(auth []string, detail, reason string) {
		t.Helper()
		// Anonymous failures fold into one event per reason and route per
		// minute (D18): start each check on a fresh minute.
		e.store.denials.flush(true)
		requireProblem(t, send(auth), 401, "unauthorized", detail)
		ev := e.lastEvent(EventTokenAuthFailed)
		require.Equal(t, reason+" | path="+path, ev.Detail)
		require.Equal(t, path, ev.Resource)
		require.Equal(t, OutcomeDenied, ev.Outcome)
		require.Empty(t, ev.AgentID)
	}
	check(nil, "missing authorization header", "missing authorization header")
	check([]string{""}, "missing authorization header", "missing authorization header")
	check([]string{"bearer x"}, "invalid authorization scheme", "invalid authorization scheme")
	check([]string{"Bearer"}, "invalid authorization scheme", "invalid authorization scheme")
	check([]string{"Basic YTpi"}, "invalid authorization scheme", "invalid authorization scheme")
	e.store.denials.flush(true)
	requireProblem(t, send([]string{"Bearer not.a.token"}), 401, "unauthorized", "token verification failed")
	require.True(t, strings.HasPrefix(e.lastEvent(EventTokenAuthFailed).Detail, "token verification failed: "))
	require.True(t, strings.HasSuffix(e.lastEvent(EventTokenAuthFailed).Detail, " | path="+path))
	// The token is taken as-is, not trimmed.
	requireProblem(t, send([]string{"Bearer  " + e.cachedAdmin()}), 401, "unauthorized", "token verification failed")
}

// --- 10.7 POST /v1/delegate ---

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

func TestRoute_Release(t *testing.T) {
	e := newTestEnv(t)
	id, tok := e.mkAgent(0, "read:data:x")
	rec := e.do("POST", "/v1/token/release", tok, nil)
	require.Equal(t, http.StatusNoContent, rec.Code)
	require.Empty(t, rec.Body.Bytes())
	require.Empty(t, rec.Header().Get("Content-Type"))
	ev := e.lastEvent(EventTokenReleased)
	require.Equal(t, "token released | jti="+claimsOf(t, tok)["jti"].(string), ev.Detail)
	require.Equal(t, id, ev.AgentID)
	require.Equal(t, "task-1", ev.TaskID)
	require.Equal(t, "orch-1", ev.OrchID)
	require.Equal(t, OutcomeSuccess, ev.Outcome)

	// The second release: 401 from the bearer check, not 403.
	requireProblem(t, e.do("POST", "/v1/token/release", tok, nil), 401, "unauthorized", "token verification failed")
	require.Equal(t, "token verification failed: "+ErrRevoked.Error()+" | path=/v1/token/release", e.lastEvent(EventTokenAuthFailed).Detail)
	requireBearerErrors(t, e, "POST", "/v1/token/release")
}

// --- 10.9 POST /v1/revoke ---

func TestRoute_Revoke(t *testing.T) {
	e := newTestEnv(t)
	admin := e.cachedAdmin()
	_, tok := e.mkAgent(0, "read:data:x")

	rec := e.do("POST", "/v1/revoke", admin, map[string]string{"level": "token", "target": claimsOf(t, tok)["jti"].(string)})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	require.Equal(t, `{"revoked":true,"level":"token","target":"`+claimsOf(t, tok)["jti"].(string)+`","count":1}`+"\n", rec.Body.String())
	require.Equal(t, false, decode(t, e.do("POST", "/v1/token/validate", "", map[string]string{"token": tok}))["valid"])

	// Targets are not checked for existence; re-revoking is idempotent but audited.
	for range 2 {
		rec = e.do("POST", "/v1/revoke", admin, map[string]string{"level": "task", "target": "no-such-task"})
		require.Equal(t, `{"revoked":true,"level":"task","target":"no-such-task","count":1}`+"\n", rec.Body.String())
	}
	evs := e.events(EventTokenRevoked)
	require.Len(t, evs, 3)
	require.Equal(t, "revoked at level=task target=no-such-task", evs[2].Detail)
	require.Equal(t, "no-such-task", evs[2].AgentID, "agent_id is the target")
	require.Equal(t, OutcomeSuccess, evs[2].Outcome)

	// Agent level: by subject.
	id2, tok2 := e.mkAgent(0, "read:data:x")
	e.do("POST", "/v1/revoke", admin, map[string]string{"level": "agent", "target": id2})
	require.Equal(t, false, decode(t, e.do("POST", "/v1/token/validate", "", map[string]string{"token": tok2}))["valid"])

	// Task level: also future tokens with that task_id.
	e.do("POST", "/v1/revoke", admin, map[string]string{"level": "task", "target": "task-1"})
	_, tok3 := e.mkAgent(0, "read:data:x")
	require.Equal(t, false, decode(t, e.do("POST", "/v1/token/validate", "", map[string]string{"token": tok3}))["valid"])

	// Chain level: the root delegator, not its own tokens.
	e2 := newTestEnv(t)
	root, rtok := e2.mkAgent(0, "read:data:x")
	mid, _ := e2.mkAgent(0, "read:data:x")
	dtok := decode(t, e2.do("POST", "/v1/delegate", rtok, map[string]any{"delegate_to": mid, "scope": []string{"read:data:x"}}))["access_token"].(string)
	rec = e2.do("POST", "/v1/revoke", e2.cachedAdmin(), map[string]string{"level": "chain", "target": root})
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, false, decode(t, e2.do("POST", "/v1/token/validate", "", map[string]string{"token": dtok}))["valid"])
	require.Equal(t, true, decode(t, e2.do("POST", "/v1/token/validate", "", map[string]string{"token": rtok}))["valid"])

	// Errors, in order.
	requireProblem(t, e.do("POST", "/v1/revoke", admin, nil), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, e.do("POST", "/v1/revoke", admin, map[string]string{"level": "token"}), 400, "invalid_request", "level and target are required")
	requireProblem(t, e.do("POST", "/v1/revoke", admin, map[string]string{"target": "x"}), 400, "invalid_request", "level and target are required")
	requireProblem(t, e.do("POST", "/v1/revoke", admin, map[string]string{"level": "Token", "target": "x"}), 400, "invalid_request", "invalid revocation level: Token")
	requireScopeError(t, e2, "POST", "/v1/revoke", "admin:revoke:*")
	requireBearerErrors(t, e, "POST", "/v1/revoke")
}

// requireScopeError checks RequireScope's 403 and its scope_violation event,
// using an agent token that has none of the admin or app scopes.
func requireScopeError(t *testing.T, e *testEnv, method, path, scope string) {
	t.Helper()
	id, tok := e.mkAgent(0, "read:data:x", "read:data:y")
	requireProblem(t, e.do(method, path, tok, `{}`), 403, "insufficient_scope", "token lacks required scope: "+scope)
	ev := e.lastEvent(EventScopeViolation)
	require.Equal(t, "scope_violation | required="+scope+" | actual=read:data:x,read:data:y | path="+path, ev.Detail)
	require.Equal(t, id, ev.AgentID)
	require.Equal(t, "task-1", ev.TaskID)
	require.Equal(t, "orch-1", ev.OrchID)
	require.Equal(t, path, ev.Resource)
	require.Equal(t, OutcomeDenied, ev.Outcome)
}

// --- 10.10 GET /v1/audit/events ---

func TestRoute_AuditEvents(t *testing.T) {
	e := newTestEnv(t)
	admin := e.adminToken() // evt 1: admin_auth
	id, _ := e.mkAgent(0, "read:data:x")
	e.do("POST", "/v1/admin/auth", "", map[string]string{"secret": "wrong"})

	get := func(q string) map[string]any {
		t.Helper()
		rec := e.do("GET", "/v1/audit/events"+q, admin, nil)
		require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
		require.Equal(t, []string{"events", "total", "offset", "limit"}, jsonKeys(t, rec.Body.Bytes()))
		return decode(t, rec)
	}
	all := get("")
	events := all["events"].([]any)
	require.Equal(t, float64(len(events)), all["total"])
	require.Equal(t, float64(0), all["offset"])
	require.Equal(t, float64(100), all["limit"])
	for i, ev := range events {
		require.Equal(t, fmt.Sprintf("evt-%06d", i+1), ev.(map[string]any)["id"], "insertion order")
	}
	require.NoError(t, VerifyChain(e.events("")), "the chain verifies")

	// Event JSON shape: empty fields omitted, detail/hash/prev_hash always there.
	rec := e.do("GET", "/v1/audit/events?event_type=agent_registered", admin, nil)
	var page struct {
		Events []json.RawMessage `json:"events"`
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &page))
	require.Len(t, page.Events, 1)
	require.Equal(t, []string{"id", "timestamp", "event_type", "agent_id", "task_id", "orch_id", "detail", "outcome", "hash", "prev_hash"}, jsonKeys(t, page.Events[0]))
	rec = e.do("GET", "/v1/audit/events?event_type=admin_auth", admin, nil)
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &page))
	require.Equal(t, []string{"id", "timestamp", "event_type", "detail", "outcome", "hash", "prev_hash"}, jsonKeys(t, page.Events[0]))
	var first Event
	require.NoError(t, json.Unmarshal(page.Events[0], &first))
	require.Equal(t, "evt-000001", first.ID)
	require.Equal(t, GenesisHash, first.PrevHash)
	require.Equal(t, first.ComputeHash(), first.Hash)
	ts, err := time.Parse(time.RFC3339Nano, first.Timestamp)
	require.NoError(t, err)
	require.Equal(t, ts.UTC().Format(time.RFC3339Nano), first.Timestamp)

	// Filters.
	byType := get("?event_type=admin_auth_failed")
	require.Equal(t, float64(1), byType["total"])
	require.Equal(t, "admin_auth_failed", byType["events"].([]any)[0].(map[string]any)["event_type"])
	byAgent := get("?agent_id=" + id)
	require.Equal(t, float64(2), byAgent["total"], "agent_registered and token_issued")
	require.Equal(t, float64(2), get("?task_id=task-1")["total"])
	require.Equal(t, float64(1), get("?outcome=denied")["total"])
	require.Equal(t, float64(1), get("?outcome=denied&event_type=admin_auth_failed")["total"])
	none := get("?agent_id=nobody")
	require.Equal(t, float64(0), none["total"])
	require.Equal(t, `{"events":[],"total":0,"offset":0,"limit":100}`+"\n", e.do("GET", "/v1/audit/events?agent_id=nobody", admin, nil).Body.String())

	// since/until: inclusive, RFC3339 with fraction or offset, garbage ignored.
	evs := e.events("")
	mid := evs[2]
	require.Equal(t, float64(len(evs)-2), get("?since=" + mid.Timestamp)["total"])
	require.Equal(t, float64(3), get("?until=" + mid.Timestamp)["total"])
	require.Equal(t, float64(1), get("?since=" + mid.Timestamp + "&until=" + mid.Timestamp)["total"])
	midT, _ := time.Parse(time.RFC3339Nano, mid.Timestamp)
	withOffset := midT.In(time.FixedZone("", 2*3600)).Format(time.RFC3339Nano)
	require.Equal(t, float64(3), get("?until=" + strings.ReplaceAll(withOffset, "+", "%2B"))["total"])
	require.Equal(t, float64(len(evs)), get("?until=" + withOffset)["total"], "an unencoded + becomes a space: ignored")
	require.Equal(t, float64(len(evs)), get("?since=yesterday&until=soon")["total"])
	require.Equal(t, float64(0), get("?since=2999-01-01T00:00:00Z")["total"])
	require.Equal(t, float64(len(evs)), get("?until=2999-01-01T00:00:00Z")["total"])
	require.Equal(t, float64(0), get("?until=0001-01-01T00:00:00Z")["total"], "a zero-time bound is still a bound")
	require.Equal(t, float64(len(evs)), get("?since=0001-01-01T00:00:00Z")["total"])

	// Paging and its echo rules.
	p := get("?limit=2&offset=1")
	require.Len(t, p["events"], 2)
	require.Equal(t, "evt-000002", p["events"].([]any)[0].(map[string]any)["id"])
	require.Equal(t, float64(len(evs)), p["total"], "total counts matches before paging")
	require.Equal(t, float64(2), p["limit"])
	require.Equal(t, float64(1), p["offset"])
	p = get("?offset=-3&limit=0")
	require.Equal(t, float64(-3), p["offset"], "raw offset echoed")
	require.Equal(t, float64(100), p["limit"])
	require.Equal(t, "evt-000001", p["events"].([]any)[0].(map[string]any)["id"], "negative offset applied as 0")
	p = get("?offset=abc&limit=xyz")
	require.Equal(t, float64(0), p["offset"])
	require.Equal(t, float64(100), p["limit"])
	p = get(fmt.Sprintf("?offset=%d", len(evs)))
	require.Equal(t, []any{}, p["events"])
	require.Equal(t, float64(len(evs)), p["total"])
	p = get("?limit=-7")
	require.Equal(t, float64(100), p["limit"])

	n := e.auditCount()
	get("")
	require.Equal(t, n, e.auditCount(), "audit queries emit no event")

	requireScopeError(t, e, "GET", "/v1/audit/events", "admin:audit:*")
	requireBearerErrors(t, e, "GET", "/v1/audit/events")
}

func TestRoute_AuditEvents_LimitCap(t *testing.T) {
	e := newTestEnv(t)
	admin := e.adminToken()
	for i := range 1001 {
		e.broker.audit(context.Background(), Event{EventType: EventTokenRevoked, Detail: fmt.Sprint(i), Outcome: OutcomeSuccess})
	}
	rec := e.do("GET", "/v1/audit/events?limit=5000", admin, nil)
	require.Equal(t, http.StatusOK, rec.Code)
	m := decode(t, rec)
	require.Len(t, m["events"], 1000, "capped")
	require.Equal(t, float64(5000), m["limit"], "requested limit echoed")
	require.Equal(t, float64(1002), m["total"])
	m = decode(t, e.do("GET", "/v1/audit/events", admin, nil))
	require.Len(t, m["events"], 100)
}

// --- 10.11 POST /v1/admin/auth ---

func TestRoute_AdminAuth(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.AdminTokenTTL = 123 * time.Second })
	rec := e.do("POST", "/v1/admin/auth", "", map[string]string{"secret": testAdminSecret})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, []string{"access_token", "expires_in", "token_type"}, jsonKeys(t, rec.Body.Bytes()))
	m := decode(t, rec)
	require.Equal(t, "Bearer", m["token_type"])
	require.Equal(t, float64(123), m["expires_in"])
	tok := m["access_token"].(string)
	require.Equal(t, []string{"iss", "sub", "exp", "nbf", "iat", "jti", "scope"}, payloadKeys(t, tok), "no aud when none is configured")
	c := claimsOf(t, tok)
	require.Equal(t, "admin", c["sub"])
	require.Equal(t, []any{"admin:launch-tokens:*", "admin:revoke:*", "admin:audit:*"}, c["scope"])
	require.Equal(t, float64(123), c["exp"].(float64)-c["iat"].(float64))
	hdr, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
	require.Equal(t, `{"alg":"EdDSA","typ":"JWT","kid":"`+e.broker.KeyID()+`"}`, string(hdr))
	ev := e.lastEvent(EventAdminAuth)
	require.Equal(t, "admin authenticated as admin", ev.Detail)
	require.Equal(t, OutcomeSuccess, ev.Outcome)
	require.Empty(t, ev.AgentID)

	requireProblem(t, e.do("POST", "/v1/admin/auth", "", map[string]string{"secret": "nope"}), 401, "unauthorized", "invalid credentials")
	ev = e.lastEvent(EventAdminAuthFailed)
	require.Equal(t, "failed admin authentication attempt", ev.Detail)
	require.Equal(t, OutcomeDenied, ev.Outcome)

	oldFormat := `Admin auth format changed. Use {"secret": "..."} instead of client_id/client_secret`
	requireProblem(t, e.do("POST", "/v1/admin/auth", "", `{"client_id":"a","client_secret":"b"}`), 400, "invalid_request", oldFormat)
	requireProblem(t, e.do("POST", "/v1/admin/auth", "", `{"secret":"`+testAdminSecret+`","client_id":"a"}`), 400, "invalid_request", oldFormat)
	require.Contains(t, e.do("POST", "/v1/admin/auth", "", `{"client_secret":"x"}`).Body.String(), `\"secret\": \"...\"`)
	requireProblem(t, e.do("POST", "/v1/admin/auth", "", `{"secret":"`+testAdminSecret+`"} x`), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, e.do("POST", "/v1/admin/auth", "", nil), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, e.do("POST", "/v1/admin/auth", "", `{"secret":7}`), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, e.do("POST", "/v1/admin/auth", "", `{}`), 400, "invalid_request", "secret is required")

	// With an audience configured, admin tokens carry it.
	e = newTestEnv(t, func(c *Config) { c.Audience = "aud-1"; c.Issuer = "iss-1" })
	c = claimsOf(t, e.adminToken())
	require.Equal(t, []any{"aud-1"}, c["aud"])
	require.Equal(t, "iss-1", c["iss"])
}

// --- 10.12 POST /v1/admin/launch-tokens ---

func TestRoute_AdminLaunchTokens(t *testing.T) {
	clk := newTestClock()
	clk.Advance(700 * time.Millisecond) // expires_at is truncated to the second
	e := newTestEnv(t, withClock(clk))
	admin := e.adminToken()

	rec := e.do("POST", "/v1/admin/launch-tokens", admin, map[string]any{"agent_name": "bot", "allowed_scope": []string{"*:*:*", "read:data:*"}})
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	require.Equal(t, []string{"launch_token", "expires_at", "policy"}, jsonKeys(t, rec.Body.Bytes()))
	require.Equal(t, []string{"allowed_scope", "max_ttl"}, jsonKeys(t, rawField(t, rec.Body.Bytes(), "policy")), "no single_use")
	m := decode(t, rec)
	require.Regexp(t, hex64, m["launch_token"])
	require.Equal(t, clk.Now().Add(30*time.Second).UTC().Truncate(time.Second).Format(time.RFC3339), m["expires_at"])
	require.Equal(t, map[string]any{"allowed_scope": []any{"*:*:*", "read:data:*"}, "max_ttl": float64(300)}, m["policy"])
	ev := e.lastEvent(EventLaunchTokenIssued)
	require.Equal(t, "launch token issued for agent=bot scope=[*:*:* read:data:*] max_ttl=300 created_by=admin", ev.Detail)
	require.Equal(t, OutcomeSuccess, ev.Outcome)
	require.Empty(t, ev.AgentID)

	// Explicit values: max_ttl is echoed unclamped, ttl is never clamped.
	rec = e.do("POST", "/v1/admin/launch-tokens", admin, map[string]any{"agent_name": "bot", "allowed_scope": []string{"x:y:z"}, "max_ttl": 999999, "ttl": 200000, "single_use": nil})
	require.Equal(t, http.StatusCreated, rec.Code)
	m = decode(t, rec)
	require.Equal(t, float64(999999), m["policy"].(map[string]any)["max_ttl"])
	require.Equal(t, clk.Now().Add(200000*time.Second).UTC().Truncate(time.Second).Format(time.RFC3339), m["expires_at"])
	// Non-positive values take the defaults.
	rec = e.do("POST", "/v1/admin/launch-tokens", admin, map[string]any{"agent_name": "bot", "allowed_scope": []string{"x:y:z"}, "max_ttl": -5, "ttl": 0})
	m = decode(t, rec)
	require.Equal(t, float64(300), m["policy"].(map[string]any)["max_ttl"])
	require.Equal(t, clk.Now().Add(30*time.Second).UTC().Truncate(time.Second).Format(time.RFC3339), m["expires_at"])

	// Errors, with launch_token_denied audits.
	requireProblem(t, e.do("POST", "/v1/admin/launch-tokens", admin, nil), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, e.do("POST", "/v1/admin/launch-tokens", admin, `{"agent_name":"a","allowed_scope":["x:y:z"],"ttl":30.0}`), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, e.do("POST", "/v1/admin/launch-tokens", admin, map[string]any{"allowed_scope": []string{"x:y:z"}}), 400, "invalid_request", "agent_name is required")
	ev = e.lastEvent(EventLaunchTokenDenied)
	require.Equal(t, "launch token denied for agent= by=admin reason=agent_name is required", ev.Detail)
	require.Equal(t, "admin", ev.AgentID)
	require.Equal(t, OutcomeDenied, ev.Outcome)
	requireProblem(t, e.do("POST", "/v1/admin/launch-tokens", admin, map[string]any{"agent_name": "bot", "allowed_scope": []string{}}), 400, "invalid_request", "allowed_scope must not be empty")
	require.Equal(t, "launch token denied for agent=bot by=admin reason=allowed_scope must not be empty", e.lastEvent(EventLaunchTokenDenied).Detail)

	requireScopeError(t, e, "POST", "/v1/admin/launch-tokens", "admin:launch-tokens:*")
	requireBearerErrors(t, e, "POST", "/v1/admin/launch-tokens")
}

// --- 10.13 POST /v1/app/launch-tokens, 10.14–10.19 apps ---

func TestRoute_Apps(t *testing.T) {
	t.Parallel() // bcrypt cost 12 for client secrets
	e := newTestEnv(t, func(c *Config) { c.AppTokenTTL = 900 * time.Second })
	admin := e.adminToken()

	// 10.15 empty list.
	rec := e.do("GET", "/v1/admin/apps", admin, nil)
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, `{"apps":[],"total":0}`+"\n", rec.Body.String())

	// 10.14 register.
	rec = e.do("POST", "/v1/admin/apps", admin, map[string]any{"name": "probe-app-16149", "scopes": []string{"read:data:*", "write:data:x"}})
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	require.Regexp(t, `^\{"app_id":"app-probe-app-16149-[0-9a-f]{6}","name":"","client_id":"pa1-[0-9a-f]{12}","client_secret":"[0-9a-f]{64}","scopes":\["read:data:\*","write:data:x"\],"token_ttl":900,"status":""\}`+"\n$", rec.Body.String())
	m := decode(t, rec)
	app := testApp{m["app_id"].(string), m["client_id"].(string), m["client_secret"].(string)}
	ev := e.lastEvent(EventAppRegistered)
	require.Equal(t, "app=probe-app-16149 client_id="+app.ClientID+" scopes=[read:data:* write:data:x] token_ttl=900", ev.Detail)
	require.Equal(t, OutcomeSuccess, ev.Outcome)

	rec = e.do("POST", "/v1/admin/apps", admin, map[string]any{"name": "billing", "scopes": []string{"read:bills:*"}, "token_ttl": 60})
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	m = decode(t, rec)
	billing := testApp{m["app_id"].(string), m["client_id"].(string), m["client_secret"].(string)}
	require.Regexp(t, `^bi-[0-9a-f]{12}$`, billing.ClientID)
	require.Equal(t, float64(60), m["token_ttl"])

	// 10.15 list: newest first, the App shape, no secrets.
	rec = e.do("GET", "/v1/admin/apps", admin, nil)
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, []string{"apps", "total"}, jsonKeys(t, rec.Body.Bytes()))
	var list struct {
		Apps  []json.RawMessage `json:"apps"`
		Total int               `json:"total"`
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &list))
	require.Equal(t, 2, list.Total)
	require.Len(t, list.Apps, 2)
	appKeys := []string{"app_id", "name", "client_id", "scopes", "token_ttl", "status", "created_at", "updated_at"}
	require.Equal(t, appKeys, jsonKeys(t, list.Apps[0]))
	var a0, a1 map[string]any
	require.NoError(t, json.Unmarshal(list.Apps[0], &a0))
	require.NoError(t, json.Unmarshal(list.Apps[1], &a1))
	require.Equal(t, billing.ID, a0["app_id"])
	require.Equal(t, app.ID, a1["app_id"])
	require.Equal(t, "probe-app-16149", a1["name"])
	require.Equal(t, "active", a1["status"])
	require.Regexp(t, `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`, a1["created_at"])
	require.Regexp(t, `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`, a1["updated_at"])

	// 10.16 get.
	rec = e.do("GET", "/v1/admin/apps/"+app.ID, admin, nil)
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, appKeys, jsonKeys(t, rec.Body.Bytes()))
	require.Equal(t, string(list.Apps[1])+"\n", rec.Body.String())
	requireProblem(t, e.do("GET", "/v1/admin/apps/app-none-000000", admin, nil), 404, "not_found", "app not found")

	// 10.19 app auth.
	rec = e.do("POST", "/v1/app/auth", "", map[string]string{"client_id": app.ClientID, "client_secret": app.Secret})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, []string{"access_token", "expires_in", "token_type", "scopes"}, jsonKeys(t, rec.Body.Bytes()))
	m = decode(t, rec)
	require.Equal(t, "Bearer", m["token_type"])
	require.Equal(t, float64(900), m["expires_in"])
	require.Equal(t, []any{"app:launch-tokens:*", "app:agents:*", "app:audit:read"}, m["scopes"])
	appTok := m["access_token"].(string)
	c := claimsOf(t, appTok)
	require.Equal(t, "app:"+app.ID, c["sub"])
	require.Equal(t, []any{"app:launch-tokens:*", "app:agents:*", "app:audit:read"}, c["scope"])
	require.Equal(t, float64(900), c["exp"].(float64)-c["iat"].(float64))
	ev = e.lastEvent(EventAppAuthenticated)
	require.Equal(t, "client_id="+app.ClientID+" app_id="+app.ID, ev.Detail)
	require.Equal(t, OutcomeSuccess, ev.Outcome)

	requireProblem(t, e.do("POST", "/v1/app/auth", "", map[string]string{"client_id": billing.ClientID, "client_secret": app.Secret}), 401, "unauthorized", "Authentication failed")
	ev = e.lastEvent(EventAppAuthFailed)
	require.Equal(t, "client_id="+billing.ClientID+" reason=wrong_secret", ev.Detail)
	require.Equal(t, OutcomeDenied, ev.Outcome)
	requireProblem(t, e.do("POST", "/v1/app/auth", "", map[string]string{"client_id": "zz-000000000000", "client_secret": "x"}), 401, "unauthorized", "Authentication failed")
	require.Equal(t, "client_id=zz-000000000000 reason=unknown_client_id", e.lastEvent(EventAppAuthFailed).Detail)
	requireProblem(t, e.do("POST", "/v1/app/auth", "", nil), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, e.do("POST", "/v1/app/auth", "", map[string]string{"client_id": "only-id"}), 400, "invalid_request", "client_id and client_secret are required")
	requireProblem(t, e.do("POST", "/v1/app/auth", "", map[string]string{"client_secret": "only-secret"}), 400, "invalid_request", "client_id and client_secret are required")

	// 10.13 app launch tokens: the ceiling, and the app_id in the audit detail.
	rec = e.do("POST", "/v1/app/launch-tokens", appTok, map[string]any{"agent_name": "worker", "allowed_scope": []string{"read:data:q"}})
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	require.Equal(t, []string{"launch_token", "expires_at", "policy"}, jsonKeys(t, rec.Body.Bytes()))
	lt := decode(t, rec)["launch_token"].(string)
	require.Equal(t, "launch token issued for agent=worker scope=[read:data:q] max_ttl=300 created_by=app:"+app.ID+" app_id="+app.ID,
		e.lastEvent(EventLaunchTokenIssued).Detail)
	rec = e.do("POST", "/v1/register", "", e.registration(lt, "read:data:q"))
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, "Agent registered with scope [read:data:q] app_id="+app.ID, e.lastEvent(EventAgentRegistered).Detail)
	require.True(t, strings.HasSuffix(e.lastEvent(EventTokenIssued).Detail, ", ttl=300 app_id="+app.ID))

	requireProblem(t, e.do("POST", "/v1/app/launch-tokens", appTok, map[string]any{"agent_name": "w", "allowed_scope": []string{"admin:revoke:*"}}),
		403, "forbidden", "requested scopes exceed app ceiling; allowed: [read:data:* write:data:x]")
	ev = e.lastEvent(EventScopeCeilingExceeded)
	require.Equal(t, "app="+app.ID+" requested=[admin:revoke:*] ceiling=[read:data:* write:data:x]", ev.Detail)
	require.Equal(t, "app:"+app.ID, ev.AgentID)
	require.Equal(t, OutcomeDenied, ev.Outcome)
	// An empty allowed_scope passes the ceiling and then fails with 400.
	requireProblem(t, e.do("POST", "/v1/app/launch-tokens", appTok, map[string]any{"agent_name": "w"}), 400, "invalid_request", "allowed_scope must not be empty")
	require.Equal(t, "launch token denied for agent=w by=app:"+app.ID+" reason=allowed_scope must not be empty", e.lastEvent(EventLaunchTokenDenied).Detail)
	requireProblem(t, e.do("POST", "/v1/app/launch-tokens", appTok, `{`), 400, "invalid_request", "malformed JSON body")
	// Route scopes: admin tokens cannot use the app route and vice versa.
	requireProblem(t, e.do("POST", "/v1/app/launch-tokens", admin, map[string]any{"agent_name": "w", "allowed_scope": []string{"read:data:q"}}),
		403, "insufficient_scope", "token lacks required scope: app:launch-tokens:*")
	requireProblem(t, e.do("POST", "/v1/admin/launch-tokens", appTok, map[string]any{"agent_name": "w", "allowed_scope": []string{"read:data:q"}}),
		403, "insufficient_scope", "token lacks required scope: admin:launch-tokens:*")
	requireProblem(t, e.do("GET", "/v1/admin/apps", appTok, nil), 403, "insufficient_scope", "token lacks required scope: admin:launch-tokens:*")

	// 10.17 update: the new ceiling applies at once to existing app tokens.
	rec = e.do("PUT", "/v1/admin/apps/"+app.ID, admin, map[string]any{"scopes": []string{"admin:revoke:*"}})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, appKeys, jsonKeys(t, rec.Body.Bytes()))
	m = decode(t, rec)
	require.Equal(t, []any{"admin:revoke:*"}, m["scopes"])
	require.Equal(t, float64(900), m["token_ttl"])
	require.Equal(t, "app_id="+app.ID+" scopes=[admin:revoke:*] updated_by=admin", e.lastEvent(EventAppUpdated).Detail)
	rec = e.do("POST", "/v1/app/launch-tokens", appTok, map[string]any{"agent_name": "w", "allowed_scope": []string{"admin:revoke:*"}})
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	requireProblem(t, e.do("POST", "/v1/app/launch-tokens", appTok, map[string]any{"agent_name": "w", "allowed_scope": []string{"read:data:q"}}),
		403, "forbidden", "requested scopes exceed app ceiling; allowed: [admin:revoke:*]")

	n := len(e.events(EventAppUpdated))
	rec = e.do("PUT", "/v1/admin/apps/"+app.ID, admin, map[string]any{"scopes": []string{"read:data:*"}, "token_ttl": 86400})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	m = decode(t, rec)
	require.Equal(t, float64(86400), m["token_ttl"])
	require.Equal(t, []any{"read:data:*"}, m["scopes"])
	evs := e.events(EventAppUpdated)
	require.Len(t, evs, n+2, "one event per changed aspect")
	require.Equal(t, "app_id="+app.ID+" scopes=[read:data:*] updated_by=admin", evs[n].Detail)
	require.Equal(t, "app_id="+app.ID+" token_ttl=900->86400 updated_by=admin", evs[n+1].Detail)
	require.Equal(t, OutcomeSuccess, evs[n+1].Outcome)
	// A renewed app token keeps its original TTL, not the app's new token_ttl.
	rec = e.do("POST", "/v1/token/renew", appTok, nil)
	require.Equal(t, float64(900), decode(t, rec)["expires_in"])

	put := func(body any) *httptest.ResponseRecorder { return e.do("PUT", "/v1/admin/apps/"+app.ID, admin, body) }
	requireProblem(t, put(nil), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, put(map[string]any{}), 400, "invalid_request", "at least one of scopes or token_ttl must be provided")
	requireProblem(t, put(map[string]any{"scopes": []string{}}), 400, "invalid_request", "at least one of scopes or token_ttl must be provided")
	requireProblem(t, put(map[string]any{"scopes": []string{"read:data"}}), 400, "invalid_request",
		`invalid scope format: use action:resource:identifier: invalid scope "read:data": only one ':', want action:resource:identifier`)
	for _, ttl := range []int{0, -1, 59, 86401} {
		requireProblem(t, put(map[string]any{"token_ttl": ttl}), 400, "invalid_ttl",
			fmt.Sprintf("invalid token TTL: must be between 60 and 86400 seconds, got %d", ttl))
	}
	requireProblem(t, e.do("PUT", "/v1/admin/apps/app-none-000000", admin, map[string]any{"token_ttl": 60}), 404, "not_found", "app not found")
	requireProblem(t, e.do("PUT", "/v1/admin/apps/app-none-000000", admin, map[string]any{"scopes": []string{"a:b:c"}}), 404, "not_found", "app not found")
	// Upstream order: with scopes given, an unknown app is 404 before the TTL check.
	requireProblem(t, e.do("PUT", "/v1/admin/apps/app-none-000000", admin, map[string]any{"scopes": []string{"a:b:c"}, "token_ttl": 5}), 404, "not_found", "app not found")

	// 10.18 deregister.
	rec = e.do("DELETE", "/v1/admin/apps/"+billing.ID, admin, nil)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Regexp(t, `^\{"app_id":"`+billing.ID+`","name":"","client_id":"","scopes":null,"token_ttl":0,"status":"inactive","deregistered_at":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"\}`+"\n$", rec.Body.String())
	ev = e.lastEvent(EventAppDeregistered)
	require.Equal(t, "app_id="+billing.ID+" name=billing deregistered_by=admin", ev.Detail)
	require.Equal(t, OutcomeSuccess, ev.Outcome)
	rec = e.do("GET", "/v1/admin/apps/"+billing.ID, admin, nil)
	require.Equal(t, "inactive", decode(t, rec)["status"])
	require.NotContains(t, rec.Body.String(), "deregistered_at")
	// Repeating succeeds and audits again.
	require.Equal(t, http.StatusOK, e.do("DELETE", "/v1/admin/apps/"+billing.ID, admin, nil).Code)
	require.Len(t, e.events(EventAppDeregistered), 2)
	requireProblem(t, e.do("DELETE", "/v1/admin/apps/app-none-000000", admin, nil), 404, "not_found", "app not found")
	// PUT still works on an inactive app and cannot change its status.
	rec = e.do("PUT", "/v1/admin/apps/"+billing.ID, admin, map[string]any{"token_ttl": 120})
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "inactive", decode(t, rec)["status"])
	// An inactive app cannot authenticate.
	requireProblem(t, e.do("POST", "/v1/app/auth", "", map[string]string{"client_id": billing.ClientID, "client_secret": billing.Secret}), 401, "unauthorized", "Authentication failed")
	require.Equal(t, "client_id="+billing.ClientID+" reason=app_inactive", e.lastEvent(EventAppAuthFailed).Detail)

	for _, r := range [][2]string{{"GET", "/v1/admin/apps"}, {"POST", "/v1/admin/apps"}, {"GET", "/v1/admin/apps/x"}, {"PUT", "/v1/admin/apps/x"}, {"DELETE", "/v1/admin/apps/x"}} {
		requireScopeError(t, e, r[0], r[1], "admin:launch-tokens:*")
		requireBearerErrors(t, e, r[0], r[1])
	}
	requireScopeError(t, e, "POST", "/v1/app/launch-tokens", "app:launch-tokens:*")
	requireBearerErrors(t, e, "POST", "/v1/app/launch-tokens")
}

// TestRoute_CreateApp_Errors checks 10.14's validation order; none of these
// reach bcrypt.
func TestRoute_CreateApp_Errors(t *testing.T) {
	e := newTestEnv(t)
	admin := e.adminToken()
	post := func(body any) *httptest.ResponseRecorder { return e.do("POST", "/v1/admin/apps", admin, body) }
	badName := "invalid app name: must be lowercase letters, digits, and hyphens"
	badScope := "invalid scope format: use action:resource:identifier"
	ttlMsg := func(n int) string {
		return fmt.Sprintf("invalid token TTL: must be between 60 and 86400 seconds, got %d", n)
	}
	requireProblem(t, post(nil), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, post(`{"name":"ok","scopes":"a:b:c"}`), 400, "invalid_request", "malformed JSON body")
	requireProblem(t, post(map[string]any{"scopes": []string{"a:b:c"}}), 400, "invalid_request", "name is required")
	requireProblem(t, post(map[string]any{"name": "ok"}), 400, "invalid_request", "scopes must not be empty")
	// A non-positive TTL is reported before a bad name; a too-large one after a bad scope.
	requireProblem(t, post(map[string]any{"name": "BAD", "scopes": []string{"bad"}, "token_ttl": 0}), 400, "invalid_ttl", ttlMsg(0))
	requireProblem(t, post(map[string]any{"name": "ok", "scopes": []string{"a:b:c"}, "token_ttl": -60}), 400, "invalid_ttl", ttlMsg(-60))
	for _, n := range []string{"a", "A1", "1ab", "ab-", "-ab", "a--b", "ab_c", "ab c", strings.Repeat("a", 65)} {
		requireProblem(t, post(map[string]any{"name": n, "scopes": []string{"bad"}, "token_ttl": 100000}), 400, "invalid_request", badName)
	}
	// D15: the detail names the offending scope and what is wrong with it.
	for _, s := range []string{"a:b", "a::c", ":b:c", "a:b:", "abc", "a:b:c:d", "a:b:c d", "a:b:\u00e9"} {
		requireProblem(t, post(map[string]any{"name": "ok", "scopes": []string{"a:b:c", s}, "token_ttl": 100000}), 400, "invalid_request",
			badScope+": "+scopemap.CheckScope(s).Error())
	}
	requireProblem(t, post(map[string]any{"name": "ok", "scopes": []string{"a:b:c"}, "token_ttl": 59}), 400, "invalid_ttl", ttlMsg(59))
	requireProblem(t, post(map[string]any{"name": "ok", "scopes": []string{"a:b:c"}, "token_ttl": 86401}), 400, "invalid_ttl", ttlMsg(86401))
	require.Empty(t, e.events(EventAppRegistered))
}

func TestClientIDPrefix(t *testing.T) {
	for name, want := range map[string]string{
		"probe-app-16149": "pa1", "billing": "bi", "a-b-c-d": "abc", "ab-cd": "ac", "x9": "x9",
	} {
		require.Equal(t, want, clientIDPrefix(name), name)
	}
}
