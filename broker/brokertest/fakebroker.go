package brokertest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// FakeAnswer answers one validate call; payload is the decoded payload of
// the token asked about (nil when the token is not three parts).
type FakeAnswer func(w http.ResponseWriter, r *http.Request, payload []byte)

// FakeBroker is an upstream-like broker the test controls, for tests of
// how a gateway copes with a broker that is slow, failing, lying or
// hanging. Its POST /v1/token/validate by default confirms any token,
// answering with the token's own payload as claims: it checks no
// signature, so it is only for tests that must control the broker's
// behaviour. Besides, an app login accepts anything, and everything else
// (the JWKS, the revocation feed) is 404, as the upstream broker answers.
type FakeBroker struct {
	Server *httptest.Server

	calls     atomic.Int64 // validate calls
	jwksCalls atomic.Int64
	mu        sync.Mutex
	answer    FakeAnswer
	stop      chan struct{}
}

// NewFakeBroker starts a fake broker answering FakeValid; it is closed
// when t ends.
func NewFakeBroker(t testing.TB) *FakeBroker {
	f := &FakeBroker{stop: make(chan struct{}), answer: FakeValid}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Server.Close)
	t.Cleanup(func() { close(f.stop) }) // runs first: releases hanging handlers
	return f
}

func (f *FakeBroker) serve(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/.well-known/jwks.json":
		f.jwksCalls.Add(1)
		FakeStatus(http.StatusNotFound)(w, r, nil)
		return
	case r.Method == http.MethodPost && r.URL.Path == "/v1/app/auth":
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"fake-app-token","expires_in":1800,"token_type":"Bearer","scopes":["read:revocations:*"]}`))
		return
	case r.URL.Path != "/v1/token/validate":
		FakeStatus(http.StatusNotFound)(w, r, nil)
		return
	}
	f.calls.Add(1)
	var req struct {
		Token string `json:"token"`
	}
	if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&req) != nil {
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
}

// Calls is the number of validate calls the fake broker received.
func (f *FakeBroker) Calls() int64 { return f.calls.Load() }

// JWKSCalls is the number of times its (missing) key set was asked for.
func (f *FakeBroker) JWKSCalls() int64 { return f.jwksCalls.Load() }

// Set changes how the fake broker answers validate calls.
func (f *FakeBroker) Set(answer FakeAnswer) {
	f.mu.Lock()
	f.answer = answer
	f.mu.Unlock()
}

// Done is closed when the test ends: an answer that waits should give up
// then, as Hang does.
func (f *FakeBroker) Done() <-chan struct{} { return f.stop }

// Hang is an answer that never comes (until the client gives up or the
// test ends).
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

// FakeEdited confirms the token with its own payload changed by change:
// a broker that lies about the claims.
func FakeEdited(change func(m map[string]any)) FakeAnswer {
	return func(w http.ResponseWriter, r *http.Request, p []byte) {
		var m map[string]any
		_ = json.Unmarshal(p, &m)
		change(m)
		out, _ := json.Marshal(m)
		FakeValid(w, r, out)
	}
}

// FakeBody answers 200 with the given body.
func FakeBody(body string) FakeAnswer {
	return func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(body))
	}
}

// FakeStatus answers with a status and a problem body.
func FakeStatus(code int) FakeAnswer {
	return func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(code)
		_, _ = w.Write([]byte(`{"type":"urn:agentwrit:error:internal_error","status":500}`))
	}
}

// FakeToken is a well-formed EdDSA JWT (signed by a throwaway key, so no
// broker's signature check accepts it) with the given scopes, expiring at
// exp: what a FakeBroker confirms.
func FakeToken(t testing.TB, exp time.Time, scope ...string) string {
	t.Helper()
	var jti [16]byte
	_, _ = rand.Read(jti[:])
	payload, err := json.Marshal(map[string]any{
		"iss": "agentwrit", "sub": "spiffe://agentwrit.local/agent/orch/task/" + hex.EncodeToString(jti[:4]),
		"exp": exp.Unix(), "iat": time.Now().Unix(), "jti": hex.EncodeToString(jti[:]),
		"scope": scope, "task_id": "task", "orch_id": "orch",
	})
	if err != nil {
		t.Fatalf("brokertest: fake token: %v", err)
	}
	signing := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"EdDSA","typ":"JWT"}`)) + "." +
		base64.RawURLEncoding.EncodeToString(payload)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	return signing + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(priv, []byte(signing)))
}
