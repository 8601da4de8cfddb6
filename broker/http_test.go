package broker

import (
	"crypto/tls"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Cross-cutting HTTP behaviour (routes, middleware, rate limits).

// TestRequestID checks the request ID on successes, problems, 404, 405 and 413.
func TestRequestID(t *testing.T) {
	e := newTestEnv(t)
	big := strings.Repeat(" ", MaxBodyBytes+1)
	cases := []struct {
		method, path, body string
		status             int
	}{
		{"GET", "/v1/health", "", 200},
		{"POST", "/v1/revoke", "", 401},
		{"GET", "/nope", "", 404},
		{"DELETE", "/v1/health", "", 405},
		{"POST", "/v1/token/validate", big, 413},
	}
	for _, c := range cases {
		// Verbatim, with no sanitization.
		req := newRequest(c.method, c.path, c.body)
		req.Header.Set("X-Request-ID", "my-id-123 <x>")
		rec := e.doReq(req)
		require.Equal(t, c.status, rec.Code, c.path)
		require.Equal(t, []string{"my-id-123 <x>"}, rec.Header().Values("X-Request-Id"), c.path)
		if rec.Header().Get("Content-Type") == "application/problem+json" {
			require.Equal(t, "my-id-123 <x>", decode(t, rec)["request_id"], c.path)
			require.Contains(t, rec.Body.String(), `"request_id":"my-id-123 \u003cx\u003e"`, "HTML-escaped")
		}

		// Absent or empty: 16 lowercase hex, new each time.
		var ids []string
		for _, set := range []bool{false, true} {
			req := newRequest(c.method, c.path, c.body)
			if set {
				req.Header.Set("X-Request-ID", "")
			}
			rec := e.doReq(req)
			id := rec.Header().Get("X-Request-Id")
			require.Regexp(t, `^[0-9a-f]{16}$`, id, c.path)
			if rec.Header().Get("Content-Type") == "application/problem+json" {
				require.Equal(t, id, decode(t, rec)["request_id"])
			}
			ids = append(ids, id)
		}
		require.NotEqual(t, ids[0], ids[1])
	}

	// The first of several values wins; the header name is case-insensitive.
	req := newRequest("GET", "/v1/health", "")
	req.Header["X-Request-Id"] = []string{"first", "second"}
	require.Equal(t, "first", e.doReq(req).Header().Get("X-Request-Id"))
}

// TestSecurityHeaders checks the security headers: on every response but the 413, and HSTS
// only over TLS.
func TestSecurityHeaders(t *testing.T) {
	e := newTestEnv(t, withClock(newTestClock())) // the rate limiter must not refill
	admin := e.cachedAdmin()
	_, agentTok := e.mkAgent(0, "read:data:x")
	for i := range 10 {
		e.doReq(newRequest("POST", "/v1/admin/auth", `{"x":`+string(rune('0'+i))+`}`)) // drain the limiter
	}
	cases := []struct {
		method, path, bearer, body string
		status                     int
	}{
		{"GET", "/v1/challenge", "", "", 200},
		{"GET", "/v1/health", "", "", 200},
		{"GET", "/v1/metrics", "", "", 200},
		{"GET", "/.well-known/jwks.json", "", "", 200},
		{"POST", "/v1/admin/launch-tokens", admin, `{"agent_name":"a","allowed_scope":["a:b:c"]}`, 201},
		{"POST", "/v1/token/release", agentTok, "", 204},
		{"GET", "/v1//health", "", "", 307},
		{"POST", "/v1/revoke", "", "", 401},
		{"GET", "/nope", "", "", 404},
		{"OPTIONS", "/v1/register", "", "", 405},
		{"POST", "/v1/admin/auth", "", `{}`, 429},
	}
	for _, overTLS := range []bool{false, true} {
		for _, c := range cases {
			req := newRequest(c.method, c.path, c.body)
			if c.bearer != "" {
				req.Header.Set("Authorization", "Bearer "+c.bearer)
			}
			if overTLS {
				req.TLS = &tls.ConnectionState{}
				if c.status == 204 {
					_, tok := e.mkAgent(0, "read:data:x")
					req.Header.Set("Authorization", "Bearer "+tok)
				}
			}
			rec := e.doReq(req)
			require.Equal(t, c.status, rec.Code, "%s %s: %s", c.method, c.path, rec.Body.String())
			requireSecurityHeaders(t, rec)
			if overTLS {
				require.Equal(t, "max-age=63072000; includeSubDomains", rec.Header().Get("Strict-Transport-Security"), c.path)
			} else {
				require.Empty(t, rec.Header().Values("Strict-Transport-Security"), c.path)
			}
			require.Empty(t, rec.Header().Values("Access-Control-Allow-Origin"), "no CORS")
		}
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("boom") }

// TestBodyLimit checks the body limit: 1 MiB is fine, one byte more is a 413 on any
// route and method, before routing and without security headers.
func TestBodyLimit(t *testing.T) {
	e := newTestEnv(t, withClock(newTestClock())) // the rate limiter must not refill
	const tokenJSON = `{"token":"x"}`
	exact := tokenJSON + strings.Repeat(" ", MaxBodyBytes-len(tokenJSON))
	require.Len(t, exact, 1<<20)

	rec := e.doReq(newRequest("POST", "/v1/token/validate", exact))
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, false, decode(t, rec)["valid"])
	require.Equal(t, http.StatusOK, e.doReq(newRequest("GET", "/v1/challenge", exact)).Code)
	require.Equal(t, http.StatusNotFound, e.doReq(newRequest("PUT", "/nope", exact)).Code)

	over := exact + " "
	for _, c := range [][2]string{
		{"POST", "/v1/token/validate"}, {"GET", "/v1/challenge"}, {"POST", "/nope"},
		{"DELETE", "/v1/health"}, {"POST", "/v1/admin/auth"}, {"POST", "/v1/revoke"},
	} {
		req := newRequest(c[0], c[1], over)
		req.Header.Set("X-Request-ID", "rid")
		req.TLS = &tls.ConnectionState{}
		rec := e.doReq(req)
		require.Equal(t, http.StatusRequestEntityTooLarge, rec.Code, c[1])
		require.Equal(t, "application/problem+json", rec.Header().Get("Content-Type"))
		require.Equal(t, `{"type":"urn:agentwrit:error:payload_too_large","title":"Request Entity Too Large","status":413,"detail":"request body must not exceed 1 MB","instance":"`+c[1]+`","error_code":"payload_too_large","request_id":"rid"}`+"\n",
			rec.Body.String())
		require.Equal(t, "rid", rec.Header().Get("X-Request-Id"))
		for _, h := range []string{"X-Content-Type-Options", "Cache-Control", "X-Frame-Options", "Strict-Transport-Security"} {
			require.Empty(t, rec.Header().Values(h), "%s on a 413", h)
		}
	}
	// A 413 on admin auth does not count against the rate limit.
	for range 10 {
		require.Equal(t, http.StatusBadRequest, e.doReq(newRequest("POST", "/v1/admin/auth", `{}`)).Code)
	}

	req := httptest.NewRequest("POST", "/v1/token/validate", failingReader{})
	requireProblem(t, e.doReq(req), 400, "invalid_request", "failed to read request body")
}

// TestDeparture_D20_MethodNotAllowedProblem: a 405 with upstream's Allow header, but in
// problem+json (D20; upstream sent plain text), HEAD on GETs, and the 307
// for unclean paths.
func TestDeparture_D20_MethodNotAllowedProblem(t *testing.T) {
	e := newTestEnv(t)
	for _, c := range []struct{ method, path, allow string }{
		{"POST", "/v1/challenge", "GET, HEAD"},
		{"DELETE", "/v1/health", "GET, HEAD"},
		{"PUT", "/v1/metrics", "GET, HEAD"},
		{"GET", "/v1/token/validate", "POST"},
		{"GET", "/v1/register", "POST"},
		{"GET", "/v1/token/renew", "POST"},
		{"GET", "/v1/delegate", "POST"},
		{"PUT", "/v1/token/release", "POST"},
		{"GET", "/v1/revoke", "POST"},
		{"POST", "/v1/audit/events", "GET, HEAD"},
		{"GET", "/v1/admin/auth", "POST"},
		{"GET", "/v1/admin/launch-tokens", "POST"},
		{"GET", "/v1/app/launch-tokens", "POST"},
		{"DELETE", "/v1/admin/apps", "GET, HEAD, POST"},
		{"POST", "/v1/admin/apps/x", "DELETE, GET, HEAD, PUT"},
		{"PATCH", "/v1/admin/apps/x", "DELETE, GET, HEAD, PUT"},
		{"GET", "/v1/app/auth", "POST"},
		{"OPTIONS", "/v1/token/validate", "POST"},
		{"POST", "/.well-known/jwks.json", "GET, HEAD"},
	} {
		req := newRequest(c.method, c.path, "")
		req.Header.Set("X-Request-ID", "rid405")
		rec := e.doReq(req)
		requireProblem(t, rec, http.StatusMethodNotAllowed, "method_not_allowed", "method "+c.method+" is not allowed on "+c.path)
		require.Equal(t, "Method Not Allowed", decode(t, rec)["title"])
		require.Equal(t, "rid405", decode(t, rec)["request_id"])
		require.Equal(t, c.allow, rec.Header().Get("Allow"), "%s %s", c.method, c.path)
		require.Equal(t, "rid405", rec.Header().Get("X-Request-Id"))
		requireSecurityHeaders(t, rec)
	}

	for _, p := range []string{"/v1/challenge", "/v1/health", "/v1/metrics", "/.well-known/jwks.json"} {
		rec := e.do("HEAD", p, "", nil)
		require.Equal(t, http.StatusOK, rec.Code, p)
	}
	require.Equal(t, http.StatusOK, e.do("HEAD", "/v1/audit/events", e.cachedAdmin(), nil).Code)

	for p, loc := range map[string]string{"/v1//health": "/v1/health", "/v1/./challenge": "/v1/challenge", "/v1/x/../health": "/v1/health"} {
		rec := e.do("GET", p, "", nil)
		require.Equal(t, http.StatusTemporaryRedirect, rec.Code, p)
		require.Equal(t, loc, rec.Header().Get("Location"))
	}
}

// TestProblemShape checks the problem+json shape byte for byte.
func TestProblemShape(t *testing.T) {
	e := newTestEnv(t)
	req := newRequest("POST", "/v1/revoke?level=token", "")
	req.Header.Set("X-Request-ID", "ab0623a4763bb204")
	rec := e.doReq(req)
	require.Equal(t, http.StatusUnauthorized, rec.Code)
	require.Equal(t, "application/problem+json", rec.Header().Get("Content-Type"))
	require.Equal(t, `{"type":"urn:agentwrit:error:unauthorized","title":"Unauthorized","status":401,"detail":"missing authorization header","instance":"/v1/revoke","error_code":"unauthorized","request_id":"ab0623a4763bb204"}`+"\n",
		rec.Body.String())

	// Titles are the standard reason phrases.
	for status, title := range map[int]string{400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict", 429: "Too Many Requests", 500: "Internal Server Error"} {
		p := NewProblem(status, "x", "d", "/p", "r")
		require.Equal(t, title, p.Title)
	}
	rec = httptest.NewRecorder()
	NewProblem(400, ErrTypeInvalidRequest, "a<b>&c", "/p", "").Write(rec)
	require.Equal(t, `{"type":"urn:agentwrit:error:invalid_request","title":"Bad Request","status":400,"detail":"a\u003cb\u003e\u0026c","instance":"/p","error_code":"invalid_request"}`+"\n", rec.Body.String())
}

// TestRateLimit_AdminAuth: 5/s, burst 10, per client IP, Retry-After 1.
func TestRateLimit_AdminAuth(t *testing.T) {
	clk := newTestClock()
	e := newTestEnv(t, withClock(clk))
	send := func(body string) *httptest.ResponseRecorder {
		req := newRequest("POST", "/v1/admin/auth", body)
		req.RemoteAddr = "192.0.2.7:4000"
		return e.doReq(req)
	}
	// Malformed requests count: the limiter runs first.
	for range 9 {
		require.Equal(t, http.StatusBadRequest, send(`not json`).Code)
	}
	require.Equal(t, http.StatusOK, send(`{"secret":"`+testAdminSecret+`"}`).Code)
	n := e.auditCount()
	rec := send(`{"secret":"` + testAdminSecret + `"}`)
	requireProblem(t, rec, http.StatusTooManyRequests, "rate_limited", "rate limit exceeded, try again later")
	require.Equal(t, "Too Many Requests", decode(t, rec)["title"])
	require.Equal(t, "1", rec.Header().Get("Retry-After"))
	requireSecurityHeaders(t, rec)
	require.Equal(t, n, e.auditCount(), "no audit event for rate limiting")

	// Refill at 2 per second (D16; upstream refilled 5).
	clk.Advance(500 * time.Millisecond)
	require.Equal(t, http.StatusBadRequest, send(`{}`).Code)
	require.Equal(t, http.StatusTooManyRequests, send(`{}`).Code)
	clk.Advance(10 * time.Second) // capped at the burst
	for range 10 {
		require.Equal(t, http.StatusBadRequest, send(`{}`).Code)
	}
	require.Equal(t, http.StatusTooManyRequests, send(`{}`).Code)
}

// TestRateLimit_AppAuth: 10/min, burst 3, per client_id, Retry-After 60.
func TestRateLimit_AppAuth(t *testing.T) {
	clk := newTestClock()
	e := newTestEnv(t, withClock(clk))
	send := func(remote, body string) *httptest.ResponseRecorder {
		req := newRequest("POST", "/v1/app/auth", body)
		req.RemoteAddr = remote
		return e.doReq(req)
	}
	// Keyed on the body's client_id, whatever the address.
	for i := range 3 {
		rec := send("192.0.2."+string(rune('1'+i))+":1", `{"client_id":"c1"}`)
		requireProblem(t, rec, 400, "invalid_request", "client_id and client_secret are required")
	}
	rec := send("192.0.2.9:1", `{"client_id":"c1","client_secret":"s"}`)
	requireProblem(t, rec, http.StatusTooManyRequests, "rate_limited", "rate limit exceeded, try again later")
	require.Equal(t, "60", rec.Header().Get("Retry-After"))
	requireSecurityHeaders(t, rec)
	require.Equal(t, http.StatusBadRequest, send("192.0.2.9:1", `{"client_id":"c2"}`).Code, "other client_ids are unaffected")

	// Without a usable client_id it falls back to the client IP.
	for _, body := range []string{`garbage`, `{}`, `{"client_id":""}`} {
		require.Equal(t, http.StatusBadRequest, send("198.51.100.1:1", body).Code)
	}
	require.Equal(t, http.StatusTooManyRequests, send("198.51.100.1:2", `{"client_id":7}`).Code)
	require.Equal(t, http.StatusBadRequest, send("198.51.100.2:1", `{}`).Code)

	// One token every six seconds.
	clk.Advance(6 * time.Second)
	require.Equal(t, http.StatusBadRequest, send("192.0.2.9:1", `{"client_id":"c1"}`).Code)
	require.Equal(t, http.StatusTooManyRequests, send("192.0.2.9:1", `{"client_id":"c1"}`).Code)
	require.Empty(t, e.events(EventAppAuthFailed))
}

// TestBearerAudienceAndIssuer checks the bearer check's audience and issuer steps.
func TestBearerAudienceAndIssuer(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.Audience = "aud-1"; c.Issuer = "iss-1" })
	sub := "spiffe://agentwrit.local/agent/o/t/0123456789abcdef"
	noAud := e.issueToken(Claims{Sub: sub, Scope: []string{"read:data:x"}, TaskID: "t", OrchID: "o"}, 60)
	requireProblem(t, e.do("POST", "/v1/token/renew", noAud, nil), 401, "unauthorized", "token audience mismatch")
	ev := e.lastEvent(EventTokenAuthFailed)
	require.Equal(t, "audience mismatch | expected=aud-1 | path=/v1/token/renew", ev.Detail)
	require.Equal(t, sub, ev.AgentID)
	require.Equal(t, "t", ev.TaskID)
	require.Equal(t, "o", ev.OrchID)
	require.Equal(t, "/v1/token/renew", ev.Resource)
	require.Equal(t, OutcomeDenied, ev.Outcome)
	other := e.issueToken(Claims{Sub: sub, Aud: []string{"aud-2", "AUD-1"}, Scope: []string{"read:data:x"}}, 60)
	requireProblem(t, e.do("POST", "/v1/token/renew", other, nil), 401, "unauthorized", "token audience mismatch")
	// validate ignores the audience.
	require.Equal(t, true, decode(t, e.do("POST", "/v1/token/validate", "", map[string]string{"token": noAud}))["valid"])

	// Tokens the broker issues carry the audience and pass.
	id, tok := e.mkAgent(0, "read:data:x")
	c := claimsOf(t, tok)
	require.Equal(t, []any{"aud-1"}, c["aud"])
	require.Equal(t, "iss-1", c["iss"])
	require.Equal(t, []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "scope", "task_id", "orch_id"}, payloadKeys(t, tok))
	rec := e.do("POST", "/v1/token/renew", tok, nil)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	renewed := decode(t, rec)["access_token"].(string)
	require.Equal(t, []any{"aud-1"}, claimsOf(t, renewed)["aud"], "renewal keeps aud")
	to, _ := e.mkAgent(0, "read:data:x")
	rec = e.do("POST", "/v1/delegate", renewed, map[string]any{"delegate_to": to, "scope": []string{"read:data:x"}})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, []any{"aud-1"}, claimsOf(t, decode(t, rec)["access_token"].(string))["aud"], "delegation copies the delegator's aud")
	_ = id

	// A token from a broker with another issuer (same key) fails verification.
	e2 := newTestEnv(t, func(c *Config) { c.Issuer = "iss-2"; c.SigningKey = e.broker.signer().key })
	foreign := e2.issueToken(Claims{Sub: sub, Aud: []string{"aud-1"}, Scope: []string{"read:data:x"}}, 60)
	requireProblem(t, e.do("POST", "/v1/token/renew", foreign, nil), 401, "unauthorized", "token verification failed")
	require.Equal(t, false, decode(t, e.do("POST", "/v1/token/validate", "", map[string]string{"token": foreign}))["valid"])
}

// TestJSONLeniency checks upstream's JSON decoding rules where clients can observe it.
func TestJSONLeniency(t *testing.T) {
	e := newTestEnv(t)
	admin := e.cachedAdmin()
	// Case-insensitive names, unknown fields ignored, trailing bytes ignored,
	// Content-Type not checked.
	req := newRequest("POST", "/v1/revoke", `{"LEVEL":"token","Target":"j1","extra":[1,2]} trailing`)
	req.Header.Set("Authorization", "Bearer "+admin)
	req.Header.Set("Content-Type", "text/plain")
	rec := e.doReq(req)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, `{"revoked":true,"level":"token","target":"j1","count":1}`+"\n", rec.Body.String())

	body := e.registration(e.mkLaunch(nil))
	upper := map[string]any{}
	for k, v := range body {
		upper[strings.ToUpper(k)] = v
	}
	rec = e.do("POST", "/v1/register", "", upper)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())

	// null leaves the zero value; single_use null means true.
	rec = e.do("POST", "/v1/admin/launch-tokens", admin, `{"agent_name":"a","allowed_scope":["read:data:x"],"single_use":null,"max_ttl":null}`)
	require.Equal(t, http.StatusCreated, rec.Code)
	lt := decode(t, rec)["launch_token"].(string)
	require.Equal(t, http.StatusOK, e.do("POST", "/v1/register", "", e.registration(lt)).Code)
	requireProblem(t, e.do("POST", "/v1/register", "", e.registration(lt)), 401, "unauthorized", "launch token: launch token already consumed")

	// Type mismatches are malformed.
	for _, b := range []string{`{"agent_name":"a","allowed_scope":"read:data:x"}`, `{"agent_name":"a","allowed_scope":["x:y:z"],"max_ttl":30.5}`,
		`{"agent_name":"a","allowed_scope":["x:y:z"],"max_ttl":1e40}`, `{"agent_name":1,"allowed_scope":["x:y:z"]}`, `[]`} {
		requireProblem(t, e.do("POST", "/v1/admin/launch-tokens", admin, b), 400, "invalid_request", "malformed JSON body")
	}
}
