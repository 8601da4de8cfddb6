package broker

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// One test per deliberate departure from upstream (docs/compatibility.md);
// D20 is TestDeparture_D20_MethodNotAllowedProblem in http_test.go.

// D1: /v1/delegate without delegate_to or scope is a 400, not a 500.
func TestDeparture_D1_DelegateMissingFields(t *testing.T) {
	e := newTestEnv(t)
	to, tok := e.mkAgent(0, "read:data:x")
	const detail = "delegate_to and scope are required"
	for _, body := range []string{
		`{}`,
		`{"scope":["read:data:x"]}`,
		`{"delegate_to":"` + to + `"}`,
		`{"delegate_to":"` + to + `","scope":[]}`,
		`{"delegate_to":"` + to + `","scope":null}`,
		`{"delegate_to":"","scope":["read:data:x"]}`,
	} {
		requireProblem(t, e.do("POST", "/v1/delegate", tok, body), 400, "invalid_request", detail)
	}
	// It is checked before the D4 subject check.
	requireProblem(t, e.do("POST", "/v1/delegate", e.cachedAdmin(), `{}`), 400, "invalid_request", detail)
	require.Empty(t, e.events(EventDelegationCreated))
}

// D2: a duplicate app name is 409 conflict, not 500.
func TestDeparture_D2_DuplicateAppName(t *testing.T) {
	t.Parallel() // bcrypt cost 12 for client secrets
	e := newTestEnv(t)
	admin := e.adminToken()
	first := e.createApp("dup-app", []string{"read:data:*"})
	rec := e.do("POST", "/v1/admin/apps", admin, map[string]any{"name": "dup-app", "scopes": []string{"write:data:*"}})
	requireProblem(t, rec, http.StatusConflict, "conflict", "app name already registered: dup-app")
	require.Equal(t, "Conflict", decode(t, rec)["title"])
	// The first app is untouched, and only one registration is audited.
	m := decode(t, e.do("GET", "/v1/admin/apps/"+first.ID, admin, nil))
	require.Equal(t, []any{"read:data:*"}, m["scopes"])
	require.Len(t, e.events(EventAppRegistered), 1)
	require.Equal(t, float64(1), decode(t, e.do("GET", "/v1/admin/apps", admin, nil))["total"])
}

// D3: a bad orch_id/task_id is a 400 before the nonce or launch token is used.
func TestDeparture_D3_BadSPIFFESegments(t *testing.T) {
	e := newTestEnv(t)
	lt := e.mkLaunch(nil) // single-use
	const detail = "orch_id and task_id must use only [A-Za-z0-9._-] and must not be . or .."
	body := e.registration(lt)
	for _, bad := range []map[string]string{
		{"orch_id": "bad orch"}, {"task_id": "a/b"}, {"orch_id": "."}, {"task_id": ".."},
		{"orch_id": "é"}, {"task_id": "x%20"}, {"orch_id": "a:b"},
	} {
		b := map[string]any{}
		for k, v := range body {
			b[k] = v
		}
		for k, v := range bad {
			b[k] = v
		}
		requireProblem(t, e.do("POST", "/v1/register", "", b), 400, "invalid_request", detail)
	}
	// Nothing was consumed: the same nonce and single-use launch token work.
	body["orch_id"], body["task_id"] = "Orch_1.a-b", "..."
	rec := e.do("POST", "/v1/register", "", body)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Regexp(t, `^spiffe://agentwrit\.local/agent/Orch_1\.a-b/\.\.\./[0-9a-f]{16}$`, decode(t, rec)["agent_id"])
}

// D4: only agent tokens delegate, and admin/app scopes never reach agents.
func TestDeparture_D4_DelegationPrivilegeEscalation(t *testing.T) {
	e := newTestEnv(t)
	to, _ := e.mkAgent(0, "read:data:x")

	// Admin and app tokens may not delegate at all.
	requireProblem(t, e.do("POST", "/v1/delegate", e.cachedAdmin(), map[string]any{"delegate_to": to, "scope": []string{"admin:revoke:*"}}),
		403, "scope_violation", "only agent tokens may delegate")
	appTok := e.issueToken(Claims{Sub: "app:app-some-abcdef", Scope: appScopes}, 60)
	requireProblem(t, e.do("POST", "/v1/delegate", appTok, map[string]any{"delegate_to": to, "scope": []string{"app:launch-tokens:*"}}),
		403, "scope_violation", "only agent tokens may delegate")

	// An agent holding admin/app scopes may not hand them on.
	_, strong := e.mkAgent(0, "read:data:x", "admin:revoke:*", "app:launch-tokens:*", "Admin:revoke:*")
	for _, s := range []string{"admin:revoke:*", "app:launch-tokens:*"} {
		requireProblem(t, e.do("POST", "/v1/delegate", strong, map[string]any{"delegate_to": to, "scope": []string{"read:data:x", s}}),
			403, "scope_violation", "scope is not delegable: "+s)
	}
	require.Empty(t, e.events(EventDelegationCreated))
	// Actions are case-sensitive: "Admin" is an ordinary action.
	rec := e.do("POST", "/v1/delegate", strong, map[string]any{"delegate_to": to, "scope": []string{"Admin:revoke:*"}})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	// Its other scopes still delegate.
	rec = e.do("POST", "/v1/delegate", strong, map[string]any{"delegate_to": to, "scope": []string{"read:data:x"}})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, []any{"read:data:x"}, claimsOf(t, decode(t, rec)["access_token"].(string))["scope"])

	// Attenuation is checked first.
	_, weak := e.mkAgent(0, "read:data:x")
	requireProblem(t, e.do("POST", "/v1/delegate", weak, map[string]any{"delegate_to": to, "scope": []string{"admin:revoke:*"}}),
		403, "scope_violation", "delegated scope exceeds delegator scope")
}

// D5: the app launch-token route needs an app:<id> subject of an active app.
func TestDeparture_D5_AppRouteNeedsActiveApp(t *testing.T) {
	t.Parallel() // bcrypt cost 12 for client secrets
	e := newTestEnv(t)
	body := map[string]any{"agent_name": "w", "allowed_scope": []string{"admin:revoke:*"}}

	// A non-app subject holding app:launch-tokens:* (here an agent whose
	// launch token allowed it) gets no way around the ceiling.
	_, agentTok := e.mkAgent(0, "app:launch-tokens:*")
	requireProblem(t, e.do("POST", "/v1/app/launch-tokens", agentTok, body), 403, "forbidden", "app not found")

	// An app subject whose app does not exist.
	ghost := e.issueToken(Claims{Sub: "app:app-ghost-abcdef", Scope: appScopes}, 60)
	requireProblem(t, e.do("POST", "/v1/app/launch-tokens", ghost, body), 403, "forbidden", "app not found")

	// An app that is no longer active, even with an unrevoked token.
	app := e.createApp("sleepy", []string{"read:data:*"})
	tok := e.appToken(app)
	ok := map[string]any{"agent_name": "w", "allowed_scope": []string{"read:data:x"}}
	require.Equal(t, http.StatusCreated, e.do("POST", "/v1/app/launch-tokens", tok, ok).Code)
	_, err := rawDB(t, e.dbPath).Exec(`UPDATE apps SET status = 'inactive' WHERE app_id = ?`, app.ID)
	require.NoError(t, err)
	requireProblem(t, e.do("POST", "/v1/app/launch-tokens", tok, ok), 403, "forbidden", "app not found")
	require.Len(t, e.events(EventLaunchTokenIssued), 2, "admin's and the active app's only")
}

// D6: a delegated token never outlives its delegator.
func TestDeparture_D6_DelegationBoundedByDelegatorExp(t *testing.T) {
	clk := newTestClock()
	e := newTestEnv(t, withClock(clk))
	to, _ := e.mkAgent(0, "read:data:x")
	_, tok := e.mkAgent(120, "read:data:x")
	exp := claimsOf(t, tok)["exp"].(float64)

	rec := e.do("POST", "/v1/delegate", tok, map[string]any{"delegate_to": to, "scope": []string{"read:data:x"}, "ttl": 100000})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	m := decode(t, rec)
	require.Equal(t, float64(120), m["expires_in"])
	require.Equal(t, exp, claimsOf(t, m["access_token"].(string))["exp"])

	clk.Advance(90 * time.Second)
	rec = e.do("POST", "/v1/delegate", tok, map[string]any{"delegate_to": to, "scope": []string{"read:data:x"}})
	m = decode(t, rec)
	require.Equal(t, float64(30), m["expires_in"], "the default 60 s is cut to what the delegator has left")
	require.Equal(t, exp, claimsOf(t, m["access_token"].(string))["exp"])

	// Shorter requests are untouched.
	rec = e.do("POST", "/v1/delegate", tok, map[string]any{"delegate_to": to, "scope": []string{"read:data:x"}, "ttl": 10})
	require.Equal(t, float64(10), decode(t, rec)["expires_in"])

	// Down a chain, every hop inherits the bound.
	d1 := m["access_token"].(string)
	rec = e.do("POST", "/v1/delegate", d1, map[string]any{"delegate_to": to, "scope": []string{"read:data:x"}, "ttl": 3600})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.LessOrEqual(t, claimsOf(t, decode(t, rec)["access_token"].(string))["exp"].(float64), exp)
}

// D7: deregistering an app revokes its own tokens and drops its unused
// launch tokens; agents it launched keep theirs.
func TestDeparture_D7_DeregistrationRevokesApp(t *testing.T) {
	t.Parallel() // bcrypt cost 12 for client secrets
	e := newTestEnv(t)
	admin := e.adminToken()
	app := e.createApp("doomed", []string{"read:data:*"})
	tok := e.appToken(app)
	mk := func() string {
		rec := e.do("POST", "/v1/app/launch-tokens", tok, map[string]any{"agent_name": "w", "allowed_scope": []string{"read:data:x"}, "single_use": false, "ttl": 600})
		require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
		return decode(t, rec)["launch_token"].(string)
	}
	used, unused := mk(), mk()
	rec := e.do("POST", "/v1/register", "", e.registration(used, "read:data:x"))
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	agentTok := decode(t, rec)["access_token"].(string)
	adminLT := e.mkLaunch(nil)

	require.Equal(t, http.StatusOK, e.do("DELETE", "/v1/admin/apps/"+app.ID, admin, nil).Code)

	// The app's own token is dead everywhere: launch tokens, renew, validate.
	requireProblem(t, e.do("POST", "/v1/app/launch-tokens", tok, map[string]any{"agent_name": "w", "allowed_scope": []string{"read:data:x"}}),
		401, "unauthorized", "token verification failed")
	requireProblem(t, e.do("POST", "/v1/token/renew", tok, nil), 401, "unauthorized", "token verification failed")
	require.Equal(t, false, decode(t, e.do("POST", "/v1/token/validate", "", map[string]string{"token": tok}))["valid"])
	// By subject, so tokens the app might still mint later would be dead too.
	require.True(t, e.store.revocations.Revoked(&Claims{Sub: "app:" + app.ID, Jti: "fresh"}))
	// Its launch tokens are gone, even a multi-use one that was used once.
	for _, lt := range []string{used, unused} {
		requireProblem(t, e.do("POST", "/v1/register", "", e.registration(lt, "read:data:x")), 401, "unauthorized", "launch token: launch token not found")
	}
	// Agents it launched and launch tokens of others are untouched.
	require.Equal(t, true, decode(t, e.do("POST", "/v1/token/validate", "", map[string]string{"token": agentTok}))["valid"])
	require.Equal(t, http.StatusOK, e.do("POST", "/v1/register", "", e.registration(adminLT, "read:data:x")).Code)
}

// D8: PUT /v1/admin/apps/{id} is all or nothing.
func TestDeparture_D8_AppUpdateAtomic(t *testing.T) {
	t.Parallel() // bcrypt cost 12 for client secrets
	e := newTestEnv(t)
	admin := e.adminToken()
	app := e.createApp("atomic", []string{"read:data:*"})
	before := e.do("GET", "/v1/admin/apps/"+app.ID, admin, nil).Body.String()

	for _, ttl := range []int{0, 59, 86401} {
		requireProblem(t, e.do("PUT", "/v1/admin/apps/"+app.ID, admin, map[string]any{"scopes": []string{"write:data:*"}, "token_ttl": ttl}),
			400, "invalid_ttl", fmt.Sprintf("invalid token TTL: must be between 60 and 86400 seconds, got %d", ttl))
	}
	requireProblem(t, e.do("PUT", "/v1/admin/apps/"+app.ID, admin, map[string]any{"scopes": []string{"write:data:*", "bad"}, "token_ttl": 600}),
		400, "invalid_request", `invalid scope format: use action:resource:identifier: invalid scope "bad": no ':', want action:resource:identifier`)
	require.Equal(t, before, e.do("GET", "/v1/admin/apps/"+app.ID, admin, nil).Body.String(), "nothing changed")
	require.Empty(t, e.events(EventAppUpdated))

	rec := e.do("PUT", "/v1/admin/apps/"+app.ID, admin, map[string]any{"scopes": []string{"write:data:*"}, "token_ttl": 600})
	require.Equal(t, http.StatusOK, rec.Code)
	m := decode(t, rec)
	require.Equal(t, []any{"write:data:*"}, m["scopes"])
	require.Equal(t, float64(600), m["token_ttl"])
}

// D9: launch tokens and agents survive a restart; nonces survive a reload
// (two brokers on one store).
func TestDeparture_D9_LaunchTokensAndAgentsPersist(t *testing.T) {
	e := newTestEnv(t)
	lt := e.mkLaunch(map[string]any{"ttl": 3600})
	spent := e.mkLaunch(map[string]any{"ttl": 3600})
	require.Equal(t, http.StatusOK, e.do("POST", "/v1/register", "", e.registration(spent)).Code)
	before, beforeTok := e.mkAgent(0, "read:data:x")
	kid := e.broker.KeyID()

	e.restart()
	require.Equal(t, kid, e.broker.KeyID())

	rec := e.do("POST", "/v1/register", "", e.registration(lt))
	require.Equal(t, http.StatusOK, rec.Code, "launch token made before the restart: %s", rec.Body.String())
	tok := decode(t, rec)["access_token"].(string)
	requireProblem(t, e.do("POST", "/v1/register", "", e.registration(spent)), 401, "unauthorized", "launch token: launch token already consumed")
	rec = e.do("POST", "/v1/delegate", tok, map[string]any{"delegate_to": before, "scope": []string{"read:data:x"}})
	require.Equal(t, http.StatusOK, rec.Code, "delegate to an agent registered before the restart: %s", rec.Body.String())
	require.Equal(t, true, decode(t, e.do("POST", "/v1/token/validate", "", map[string]string{"token": beforeTok}))["valid"])

	// A reload: a second broker on the same store sees the first's nonces.
	b2, err := New(e.store, Config{AdminSecret: testAdminHash})
	require.NoError(t, err)
	body := e.registration(e.mkLaunch(nil)) // nonce from the first broker
	e.broker = b2
	rec = e.do("POST", "/v1/register", "", body)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
}

// D10: outstanding nonces are bounded and expired ones are pruned.
func TestDeparture_D10_NoncesBounded(t *testing.T) {
	clk := newTestClock()
	e := newTestEnv(t, withClock(clk))
	nonces := newMemoryNonces(3)
	e.store.nonces = nonces // before any request
	lt := e.mkLaunch(map[string]any{"single_use": false, "ttl": 3600})

	first := e.registration(lt)
	for range 5 {
		e.nonce()
	}
	require.Equal(t, 3, nonces.len(), "bounded")
	requireProblem(t, e.do("POST", "/v1/register", "", first), 401, "unauthorized", "nonce: nonce not found or expired")
	last := e.registration(lt)
	require.Equal(t, http.StatusOK, e.do("POST", "/v1/register", "", last).Code, "the newest survives")

	// Expired nonces go on the next challenge, consumed or not.
	clk.Advance(31 * time.Second)
	e.nonce()
	require.Equal(t, 1, nonces.len())
	// And on the janitor's pass.
	clk.Advance(31 * time.Second)
	require.NoError(t, nonces.PruneNonces(context.Background(), clk.Now()))
	require.Zero(t, nonces.len())
}

// D11: the rate limiter keys on Config.ClientIP, never on X-Forwarded-For.
func TestDeparture_D11_RateLimitKeyNotSpoofable(t *testing.T) {
	clk := newTestClock() // the limiter must not refill during the test
	e := newTestEnv(t, withClock(clk))
	send := func(remote, xff, client string) int {
		req := newRequest("POST", "/v1/admin/auth", `{}`)
		req.RemoteAddr = remote
		if xff != "" {
			req.Header.Set("X-Forwarded-For", xff)
		}
		if client != "" {
			req.Header.Set("X-Test-Client", client)
		}
		return e.doReq(req).Code
	}
	for i := range 10 {
		require.Equal(t, 400, send("192.0.2.1:1234", fmt.Sprintf("198.51.100.%d", i), ""))
	}
	require.Equal(t, 429, send("192.0.2.1:5678", "203.0.113.9", ""), "a fresh X-Forwarded-For does not buy a fresh bucket")
	require.Equal(t, 400, send("192.0.2.2:1234", "", ""), "another address has its own bucket")

	// The embedding program (Caddy's client_ip) supplies the key.
	e = newTestEnv(t, withClock(clk), func(c *Config) { c.ClientIP = func(r *http.Request) string { return r.Header.Get("X-Test-Client") } })
	for range 10 {
		require.Equal(t, 400, send("192.0.2.1:1", "", "a"))
	}
	require.Equal(t, 429, send("192.0.2.9:1", "", "a"), "same client through another hop")
	require.Equal(t, 400, send("192.0.2.1:1", "", "b"))
}

// D12: audit events are ordered numerically, also past evt-999999.
func TestDeparture_D12_AuditNumericOrder(t *testing.T) {
	e := newTestEnv(t)
	admin := e.cachedAdmin()
	for i := range 11 {
		e.broker.audit(context.Background(), Event{EventType: EventTokenRevoked, Detail: fmt.Sprint(i)})
	}
	m := decode(t, e.do("GET", "/v1/audit/events?offset=8&limit=2", admin, nil))
	ids := []string{}
	for _, ev := range m["events"].([]any) {
		ids = append(ids, ev.(map[string]any)["id"].(string))
	}
	require.Equal(t, []string{"evt-000009", "evt-000010"}, ids)

	// Jump the counter to just below a million: text order would put
	// evt-1000000 before evt-999999.
	ctx := context.Background()
	head, err := e.store.db.AuditHead(ctx)
	require.NoError(t, err)
	jump := []Event{{EventType: EventTokenRevoked, Detail: "jump"}}
	ChainEvents(jump, AuditHead{Seq: 999_996, Hash: head.Hash, Timestamp: head.Timestamp}, time.Now())
	insertRawEvent(t, e.dbPath, &jump[0])
	for range 3 {
		e.broker.audit(context.Background(), Event{EventType: EventTokenRevoked, Detail: "late"})
	}
	listIDs := func() []string {
		m := decode(t, e.do("GET", "/v1/audit/events?event_type=token_revoked&offset=11", e.cachedAdmin(), nil))
		var out []string
		for _, ev := range m["events"].([]any) {
			out = append(out, ev.(map[string]any)["id"].(string))
		}
		return out
	}
	want := []string{"evt-999997", "evt-999998", "evt-999999", "evt-1000000"}
	require.Equal(t, want, listIDs())
	require.NoError(t, e.verifyAudit())

	// After a restart the chain continues from the numerically last event.
	e.restart()
	e.broker.audit(context.Background(), Event{EventType: EventTokenRevoked, Detail: "after"})
	require.Equal(t, append(want, "evt-1000001"), listIDs())
	require.NoError(t, e.verifyAudit())
}

// D13: GET /.well-known/jwks.json publishes the verification key.
func TestDeparture_D13_JWKS(t *testing.T) {
	e := newTestEnv(t)
	rec := e.do("GET", "/.well-known/jwks.json", "", nil)
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	requireSecurityHeaders(t, rec)
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &set))
	require.Len(t, set.Keys, 1)
	require.Equal(t, []string{"kty", "crv", "x", "kid", "alg", "use"}, jsonKeys(t, set.Keys[0]))
	var k map[string]string
	require.NoError(t, json.Unmarshal(set.Keys[0], &k))
	require.Equal(t, "OKP", k["kty"])
	require.Equal(t, "Ed25519", k["crv"])
	require.Equal(t, "EdDSA", k["alg"])
	require.Equal(t, "sig", k["use"])
	x, err := base64.RawURLEncoding.Strict().DecodeString(k["x"])
	require.NoError(t, err)
	require.Equal(t, []byte(e.broker.PublicKey()), x)
	require.Len(t, k["kid"], 43)
	require.Equal(t, Thumbprint(ed25519.PublicKey(x)), k["kid"])

	// A third party can verify a broker token with nothing but the JWKS.
	tok := e.cachedAdmin()
	parts := strings.Split(tok, ".")
	hdr, _ := base64.RawURLEncoding.DecodeString(parts[0])
	var h map[string]string
	require.NoError(t, json.Unmarshal(hdr, &h))
	require.Equal(t, k["kid"], h["kid"])
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	require.True(t, ed25519.Verify(ed25519.PublicKey(x), []byte(parts[0]+"."+parts[1]), sig))

	require.Equal(t, http.StatusOK, e.do("HEAD", "/.well-known/jwks.json", "", nil).Code)
	require.Equal(t, http.StatusMethodNotAllowed, e.do("POST", "/.well-known/jwks.json", "", nil).Code)
}

// D14: unknown paths get a problem+json 404.
func TestDeparture_D14_NotFoundProblem(t *testing.T) {
	e := newTestEnv(t)
	for _, p := range []string{"/", "/nope", "/v1/health/", "/v1/admin/apps/", "/v1/admin/apps/x/y", "/V1/health", "/.well-known/jwks"} {
		for _, method := range []string{"GET", "POST"} {
			req := newRequest(method, p, "")
			req.Header.Set("X-Request-ID", "rid-404")
			rec := e.doReq(req)
			requireProblem(t, rec, http.StatusNotFound, "not_found", "")
			require.Equal(t, `{"type":"urn:agentwrit:error:not_found","title":"Not Found","status":404,"detail":"no route for `+p+`","instance":"`+p+`","error_code":"not_found","request_id":"rid-404"}`+"\n",
				rec.Body.String())
			requireSecurityHeaders(t, rec)
			require.Equal(t, "rid-404", rec.Header().Get("X-Request-Id"))
		}
	}
	// The query string is not part of instance.
	rec := e.do("GET", "/nope?a=b", "", nil)
	require.Equal(t, "/nope", decode(t, rec)["instance"])
}

// D15: one scope grammar at every entry point. A scope with whitespace, a
// control byte, a quote or a third colon is a 400 naming it at register,
// delegate, launch-token and app creation and update, before anything
// changes; a token that carries one (issued before this rule, or forged
// with a leaked key) does not verify.
func TestDeparture_D15_ScopeGrammar(t *testing.T) {
	e := newTestEnv(t)
	admin := e.cachedAdmin()
	bad := []string{"read:orders:x write:orders:7 admin:revoke:*", "read:orders:x\r\nX-Injected: 1", "read:orders:a:b", `read:orders:"x"`}
	for _, s := range bad {
		want := "invalid scope format: use action:resource:identifier: " + scopemap.CheckScope(s).Error()
		before := e.auditSeq()
		lt := e.mkLaunch(map[string]any{"allowed_scope": []string{"read:orders:*"}, "single_use": true})
		reg := e.registration(lt, s)
		requireProblem(t, e.do("POST", "/v1/register", "", reg), 400, "invalid_request", want)
		requireProblem(t, e.do("POST", "/v1/admin/launch-tokens", admin, map[string]any{"agent_name": "a", "allowed_scope": []string{s}}),
			400, "invalid_request", want)
		requireProblem(t, e.do("POST", "/v1/admin/apps", admin, map[string]any{"name": "app-x", "scopes": []string{s}}),
			400, "invalid_request", want)
		_, tok := e.mkAgent(0, "read:orders:*")
		requireProblem(t, e.do("POST", "/v1/delegate", tok, map[string]any{"delegate_to": "spiffe://agentwrit.local/agent/o/t/0", "scope": []string{s}}),
			400, "invalid_request", want)
		// Nothing was consumed: the same launch token and nonce still register.
		reg["requested_scope"] = []string{"read:orders:1"}
		require.Equal(t, http.StatusOK, e.do("POST", "/v1/register", "", reg).Code, "launch token and nonce intact")
		require.Positive(t, e.auditSeq()-before)
		require.Empty(t, e.events(EventLaunchTokenDenied))
	}
	app := e.createApp("grammar", []string{"read:orders:*"})
	requireProblem(t, e.do("PUT", "/v1/admin/apps/"+app.ID, admin, map[string]any{"scopes": []string{bad[0]}}),
		400, "invalid_request", "invalid scope format: use action:resource:identifier: "+scopemap.CheckScope(bad[0]).Error())

	// A token carrying such a scope, signed with the broker's own key.
	now := e.broker.now().Unix()
	forged := e.forge(e.ourHeader(), strings.Replace(payloadAt(now, ""), `"scope":["read:data:x"]`, `"scope":["read:orders:x write:orders:7"]`, 1))
	_, err := e.broker.Verify(context.Background(), forged)
	require.ErrorIs(t, err, ErrMalformedToken)
	require.Equal(t, false, decode(t, e.do("POST", "/v1/token/validate", "", map[string]string{"token": forged}))["valid"])
	requireProblem(t, e.do("POST", "/v1/token/renew", forged, nil), 401, "unauthorized", "token verification failed")
}

// D16: one per-IP limit stands in front of every credential check, so
// random client IDs (each a fresh bucket of upstream's per-client_id
// limiter, each a bcrypt) get 429 like repeated ones, and admin and app
// guesses share it.
func TestDeparture_D16_CredentialLimitPerClientIP(t *testing.T) {
	clk := newTestClock()
	e := newTestEnv(t, withClock(clk))
	send := func(path, remote, body string) int {
		req := newRequest("POST", path, body)
		req.RemoteAddr = remote
		return e.doReq(req).Code
	}
	for i := range 8 {
		require.Equal(t, http.StatusUnauthorized, send("/v1/app/auth", "192.0.2.9:1", fmt.Sprintf(`{"client_id":"x-%012d","client_secret":"s"}`, i)))
	}
	require.Equal(t, http.StatusUnauthorized, send("/v1/admin/auth", "192.0.2.9:1", `{"secret":"wrong"}`))
	require.Equal(t, http.StatusUnauthorized, send("/v1/app/auth", "192.0.2.9:1", `{"client_id":"fresh","client_secret":"s"}`))
	require.Equal(t, http.StatusTooManyRequests, send("/v1/app/auth", "192.0.2.9:1", `{"client_id":"fresher","client_secret":"s"}`))
	require.Equal(t, http.StatusTooManyRequests, send("/v1/admin/auth", "192.0.2.9:1", `{"secret":"`+testAdminSecret+`"}`))
	require.Equal(t, http.StatusOK, send("/v1/admin/auth", "192.0.2.10:1", `{"secret":"`+testAdminSecret+`"}`), "another client is unaffected")
	clk.Advance(500 * time.Millisecond)
	require.Equal(t, http.StatusOK, send("/v1/admin/auth", "192.0.2.9:1", `{"secret":"`+testAdminSecret+`"}`), "2 per second")
}

// D17: challenges are limited per client IP (100 at once, 20/s after), so
// one client cannot flush the bounded nonce store and evict another
// client's nonce.
func TestDeparture_D17_ChallengeLimitPerClientIP(t *testing.T) {
	clk := newTestClock()
	e := newTestEnv(t, withClock(clk))
	challenge := func(remote string) *httptest.ResponseRecorder {
		req := newRequest("GET", "/v1/challenge", "")
		req.RemoteAddr = remote
		return e.doReq(req)
	}
	victim := decode(t, challenge("192.0.2.20:1"))["nonce"].(string)
	for range 100 {
		require.Equal(t, http.StatusOK, challenge("192.0.2.21:1").Code)
	}
	rec := challenge("192.0.2.21:1")
	requireProblem(t, rec, http.StatusTooManyRequests, "rate_limited", "rate limit exceeded, try again later")
	require.Equal(t, "1", rec.Header().Get("Retry-After"))
	clk.Advance(time.Second)
	for range 20 {
		require.Equal(t, http.StatusOK, challenge("192.0.2.21:1").Code)
	}
	require.Equal(t, http.StatusTooManyRequests, challenge("192.0.2.21:1").Code)
	require.NoError(t, e.store.nonces.ConsumeNonce(context.Background(), victim, clk.Now()), "the other client's nonce survived")
}

// D18: denials of callers without a valid token are folded: the first per
// (event type, reason, rule) per minute is written at once, the rest are
// one summary with their count. A verified agent's denials stay one event
// each. Request text in a denial is capped at 256 bytes, marked as cut.
func TestDeparture_D18_AnonymousDenialsFolded(t *testing.T) {
	clk := newTestClock()
	e := newTestEnv(t, withClock(clk))
	e.store.denials.now = clk.Now
	before := e.auditSeq()
	long := "GET /" + strings.Repeat("a", 16<<10)
	for range 2000 {
		e.broker.RecordDenial(context.Background(), Denial{EventType: EventTokenAuthFailed, Resource: long,
			Reason: "missing_token", Rule: "require GET /{p...} read:x:*", Detail: "missing_token"})
	}
	e.broker.RecordDenial(context.Background(), Denial{EventType: EventTokenAuthFailed, Resource: "GET /b", Reason: "invalid_token", Detail: "invalid_token"})
	require.Equal(t, before+2, e.auditSeq(), "the first of each group only")
	first := e.lastEvent(EventTokenAuthFailed)
	require.Equal(t, "invalid_token", first.Detail)
	evs := e.events(EventTokenAuthFailed)
	require.Len(t, evs[len(evs)-2].Resource, 256)
	require.True(t, strings.HasSuffix(evs[len(evs)-2].Resource, " [cut]"))

	clk.Advance(30 * time.Second)
	e.store.denials.flush(false)
	require.Equal(t, before+2, e.auditSeq(), "nothing until the minute is over")
	clk.Advance(31 * time.Second)
	e.store.denials.flush(false)
	require.Equal(t, before+3, e.auditSeq(), "one summary")
	sum := e.lastEvent(EventTokenAuthFailed)
	require.Contains(t, sum.Detail, "missing_token | 1999 more like this between ")
	require.Contains(t, sum.Detail, "rule=require GET /{p...} read:x:*")
	require.Equal(t, OutcomeDenied, sum.Outcome)

	// A new minute writes the first again.
	e.broker.RecordDenial(context.Background(), Denial{EventType: EventTokenAuthFailed, Resource: "GET /c", Reason: "missing_token", Rule: "require GET /{p...} read:x:*"})
	require.Equal(t, before+4, e.auditSeq())

	// A verified agent's denials are evidence: one event each.
	c := &Claims{Sub: "spiffe://agentwrit.local/agent/o/t/1", TaskID: "t", OrchID: "o"}
	for range 3 {
		e.broker.RecordDenial(context.Background(), Denial{EventType: EventScopeViolation, Claims: c, Resource: "GET /x", Reason: "insufficient_scope"})
	}
	require.Equal(t, before+7, e.auditSeq())
	require.NoError(t, e.verifyAudit())
}

// D19: renewal cannot stretch a delegated token past the tokens it
// descends from (upstream reissued it for its full lifetime, again and
// again, after the delegator was dead), and a delegate whose delegator's
// token was revoked, released or has expired cannot renew at all.
func TestDeparture_D19_RenewalBoundedByDelegationChain(t *testing.T) {
	clk := newTestClock()
	e := newTestEnv(t, withClock(clk))
	to, _ := e.mkAgent(0, "read:data:x")
	delegate := func(from string, ttl int) string {
		rec := e.do("POST", "/v1/delegate", from, map[string]any{"delegate_to": to, "scope": []string{"read:data:x"}, "ttl": ttl})
		require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
		return decode(t, rec)["access_token"].(string)
	}
	renew := func(tok string) *httptest.ResponseRecorder { return e.do("POST", "/v1/token/renew", tok, nil) }

	_, root := e.mkAgent(10, "read:data:x")
	exp := claimsOf(t, root)["exp"].(float64)
	d := delegate(root, 10)
	clk.Advance(4 * time.Second)
	rec := renew(d)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, float64(6), decode(t, rec)["expires_in"], "what the delegator has left, not another 10 s")
	d = decode(t, rec)["access_token"].(string)
	require.Equal(t, exp, claimsOf(t, d)["exp"])
	clk.Advance(3 * time.Second)
	rec = renew(d)
	require.Equal(t, float64(3), decode(t, rec)["expires_in"], "renewed again: still bounded")
	d = decode(t, rec)["access_token"].(string)
	clk.Advance(3 * time.Second) // the root's last second
	rec = renew(d)
	requireProblem(t, rec, http.StatusUnauthorized, "unauthorized", "token renewal failed")
	require.Contains(t, e.lastEvent(EventTokenRenewalFailed).Detail, "no longer valid")

	// Released, revoked, or renewed away: dead, one hop up or two.
	for _, c := range []struct {
		name string
		hops int
		kill func(root string)
	}{
		{"released", 1, func(root string) {
			require.Equal(t, http.StatusNoContent, e.do("POST", "/v1/token/release", root, nil).Code)
		}},
		{"revoked", 1, func(root string) { require.NoError(t, e.revoke(LevelToken, claimsOf(t, root)["jti"].(string))) }},
		{"renewed away", 1, func(root string) { require.Equal(t, http.StatusOK, renew(root).Code) }},
		{"released, two hops up", 2, func(root string) {
			require.Equal(t, http.StatusNoContent, e.do("POST", "/v1/token/release", root, nil).Code)
		}},
	} {
		_, root := e.mkAgent(600, "read:data:x")
		d := delegate(root, 300)
		if c.hops == 2 {
			d = delegate(d, 300)
		}
		c.kill(root)
		requireProblem(t, renew(d), http.StatusUnauthorized, "unauthorized", "token renewal failed")
	}
}

// unreachableDB is a Database whose registrations fail as a lost
// connection does, while down is set.
type unreachableDB struct {
	Database
	down *atomic.Bool
}

func (d unreachableDB) Register(ctx context.Context, r *Registration) error {
	if d.down.Load() {
		return fmt.Errorf("register: %w", ErrUnavailable)
	}
	return d.Database.Register(ctx, r)
}

// D21: a database that cannot be reached is a 503 with Retry-After (upstream:
// 500), and nothing was acknowledged or consumed: the same single-use launch
// token registers once the database is back.
func TestDeparture_D21_DatabaseUnreachable(t *testing.T) {
	db, err := openTestDatabase(context.Background(), filepath.Join(t.TempDir(), "broker.db"))
	require.NoError(t, err)
	var down atomic.Bool
	store, err := NewStore(context.Background(), unreachableDB{db, &down}, StoreOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	b, err := New(store, Config{AdminSecret: testAdminHash})
	require.NoError(t, err)
	e := &testEnv{t: t, store: store, broker: b}

	lt := e.mkLaunch(nil) // single-use
	down.Store(true)
	rec := e.do("POST", "/v1/register", "", e.registration(lt))
	requireProblem(t, rec, http.StatusServiceUnavailable, "service_unavailable", "the broker's database is unavailable; retry shortly")
	require.Equal(t, "1", rec.Header().Get("Retry-After"))

	down.Store(false)
	rec = e.do("POST", "/v1/register", "", e.registration(lt))
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
}
