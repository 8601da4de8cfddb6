package broker

import (
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
