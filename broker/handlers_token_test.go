package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
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
