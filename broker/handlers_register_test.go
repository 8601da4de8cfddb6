package broker

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

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
