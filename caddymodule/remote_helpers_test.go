package caddymodule

// Helpers for remote-mode tests, exported so that the external e2e tests
// (package caddymodule_test) can use them too. Package remote's tests have
// their own (test files cannot be imported); this copy keeps what the
// Caddy-level tests need.

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
)

// TestPKI is brokertest.PKI, under the name the e2e tests use.
type TestPKI = brokertest.PKI

// NewTestPKI is brokertest.NewPKI.
func NewTestPKI(t testing.TB) *TestPKI { return brokertest.NewPKI(t) }

// TestBroker is this project's broker served over HTTP(S) by an
// httptest server.
type TestBroker struct {
	Broker *broker.Broker
	Server *httptest.Server
	t      testing.TB
	admin  string
}

// NewTestBroker serves a fresh broker; serverTLS nil means plain HTTP.
func NewTestBroker(t testing.TB, serverTLS *tls.Config) *TestBroker {
	t.Helper()
	store := brokertest.OpenStore(t, "")
	hash, err := bcrypt.GenerateFromPassword([]byte("remote-secret"), bcrypt.MinCost)
	require.NoError(t, err)
	br, err := broker.New(store, broker.Config{AdminSecret: string(hash)})
	require.NoError(t, err)
	tb := &TestBroker{Broker: br, t: t}
	tb.Server = httptest.NewUnstartedServer(br)
	if serverTLS != nil {
		tb.Server.TLS = serverTLS
		tb.Server.StartTLS()
	} else {
		tb.Server.Start()
	}
	t.Cleanup(func() {
		tb.Server.Close()
		store.Close()
	})
	tb.admin = tb.call("POST", "/v1/admin/auth", "", map[string]string{"secret": "remote-secret"}, 200)["access_token"].(string)
	return tb
}

// call drives the broker's API in-process (whatever the server's TLS).
func (tb *TestBroker) call(method, path, bearer string, body any, want int) map[string]any {
	tb.t.Helper()
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		require.NoError(tb.t, err)
		rd = strings.NewReader(string(raw))
	}
	req := httptest.NewRequest(method, path, rd)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	rec := httptest.NewRecorder()
	tb.Broker.ServeHTTP(rec, req)
	require.Equal(tb.t, want, rec.Code, rec.Body.String())
	var m map[string]any
	_ = json.Unmarshal(rec.Body.Bytes(), &m)
	return m
}

// Agent registers an agent with the scopes and returns its ID and token.
func (tb *TestBroker) Agent(scope ...string) (string, string) {
	tb.t.Helper()
	launch := tb.call("POST", "/v1/admin/launch-tokens", tb.admin,
		map[string]any{"agent_name": "remote", "allowed_scope": scope, "max_ttl": 600}, 201)["launch_token"].(string)
	nonce := tb.call("GET", "/v1/challenge", "", nil, 200)["nonce"].(string)
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(tb.t, err)
	nb, err := hex.DecodeString(nonce)
	require.NoError(tb.t, err)
	m := tb.call("POST", "/v1/register", "", map[string]any{
		"launch_token": launch, "nonce": nonce,
		"public_key": base64.StdEncoding.EncodeToString(pub),
		"signature":  base64.StdEncoding.EncodeToString(ed25519.Sign(priv, nb)),
		"orch_id":    "orch-remote", "task_id": "task-remote", "requested_scope": scope,
	}, 200)
	return m["agent_id"].(string), m["access_token"].(string)
}

// RevokeToken revokes one token by its jti.
func (tb *TestBroker) RevokeToken(tok string) {
	tb.t.Helper()
	tb.call("POST", "/v1/revoke", tb.admin, map[string]string{"level": "token", "target": TokenJTI(tb.t, tok)}, 200)
}

// TokenJTI reads a token's jti (without verifying it).
func TokenJTI(t testing.TB, tok string) string {
	t.Helper()
	u, err := broker.ParseUnverified(tok)
	require.NoError(t, err)
	return u.Claims.Jti
}

// FakeBroker is a /v1/token/validate endpoint the test controls. By
// default it confirms any token, answering with the token's own payload
// as claims (it checks no signature: only for tests that must control the
// broker's behaviour). Otherwise it is like the upstream broker: app
// logins succeed, and there is no JWKS and no revocation feed (404).
type FakeBroker struct {
	Server *httptest.Server
	calls  atomic.Int64
	mu     sync.Mutex
	answer func(w http.ResponseWriter, r *http.Request, payload []byte)
	stop   chan struct{}
}

// NewFakeBroker starts a fake broker answering valid:true.
func NewFakeBroker(t testing.TB) *FakeBroker {
	f := &FakeBroker{stop: make(chan struct{}), answer: FakeValid}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/token/validate" {
			upstreamRoute(w, r)
			return
		}
		f.calls.Add(1)
		var req struct {
			Token string `json:"token"`
		}
		if r.Method != http.MethodPost || r.URL.Path != "/v1/token/validate" || json.NewDecoder(r.Body).Decode(&req) != nil {
			http.Error(w, "bad request to fake broker", http.StatusBadRequest)
			return
		}
		var payload []byte
		if parts := strings.Split(req.Token, "."); len(parts) == 3 {
			payload, _ = base64.RawURLEncoding.DecodeString(parts[1])
		}
		f.mu.Lock()
		answer := f.answer
		f.mu.Unlock()
		answer(w, r, payload)
	}))
	t.Cleanup(f.Server.Close)
	t.Cleanup(func() { close(f.stop) }) // runs first: releases hanging handlers
	return f
}

// upstreamRoute answers what the fake broker serves besides validation:
// an app login, as upstream does, and 404 for this project's JWKS and
// revocation feed.
func upstreamRoute(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && r.URL.Path == "/v1/app/auth" {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"access_token":"fake-app-token","expires_in":1800,"token_type":"Bearer","scopes":["read:revocations:*"]}`)
		return
	}
	FakeStatus(http.StatusNotFound)(w, r, nil)
}

// Calls is the number of validate calls the fake broker received.
func (f *FakeBroker) Calls() int64 { return f.calls.Load() }

// Set changes how the fake broker answers.
func (f *FakeBroker) Set(answer func(w http.ResponseWriter, r *http.Request, payload []byte)) {
	f.mu.Lock()
	f.answer = answer
	f.mu.Unlock()
}

// Hang is an answer that never comes (until the client gives up).
func (f *FakeBroker) Hang(w http.ResponseWriter, r *http.Request, _ []byte) {
	select {
	case <-r.Context().Done():
	case <-f.stop:
	}
}

// FakeValid confirms the token with its own payload as claims.
func FakeValid(w http.ResponseWriter, _ *http.Request, payload []byte) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"valid":true,"claims":` + string(payload) + `}`))
}

// FakeBody answers 200 with the given body.
func FakeBody(body string) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(body))
	}
}

// FakeStatus answers with a status and a problem body.
func FakeStatus(code int) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(code)
		_, _ = w.Write([]byte(`{"type":"urn:agentwrit:error:internal_error","status":500}`))
	}
}

// FakeToken is a well-formed EdDSA JWT (signed by a throwaway key) with
// the given scopes, expiring at exp.
func FakeToken(t testing.TB, exp time.Time, scope ...string) string {
	t.Helper()
	var jti [16]byte
	_, _ = rand.Read(jti[:])
	payload, err := json.Marshal(map[string]any{
		"iss": "agentwrit", "sub": "spiffe://agentwrit.local/agent/orch/task/" + hex.EncodeToString(jti[:4]),
		"exp": exp.Unix(), "iat": time.Now().Unix(), "jti": hex.EncodeToString(jti[:]),
		"scope": scope, "task_id": "task", "orch_id": "orch",
	})
	require.NoError(t, err)
	signing := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"EdDSA","typ":"JWT"}`)) + "." +
		base64.RawURLEncoding.EncodeToString(payload)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	return signing + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(priv, []byte(signing)))
}
