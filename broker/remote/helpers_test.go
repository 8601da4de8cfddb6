package remote

// Helpers for the validator's tests: a CA and certificates, this
// project's broker over HTTP(S), and a fake broker the test controls.

import (
	"context"
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

// testPKI is brokertest.PKI.
type testPKI = brokertest.PKI

func newTestPKI(t testing.TB) *testPKI { return brokertest.NewPKI(t) }

// testBroker is this project's broker served over HTTP(S) by an
// httptest server. validations counts POST /v1/token/validate calls.
type testBroker struct {
	Broker      *broker.Broker
	Server      *httptest.Server
	validations atomic.Int64
	t           testing.TB
	admin       string
}

// newTestBroker serves a fresh broker; serverTLS nil means plain HTTP.
func newTestBroker(t testing.TB, serverTLS *tls.Config) *testBroker {
	t.Helper()
	store := brokertest.OpenStore(t, "")
	hash, err := bcrypt.GenerateFromPassword([]byte("remote-secret"), bcrypt.MinCost)
	require.NoError(t, err)
	br, err := broker.New(store, broker.Config{AdminSecret: string(hash)})
	require.NoError(t, err)
	tb := &testBroker{Broker: br, t: t}
	tb.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == validatePath {
			tb.validations.Add(1)
		}
		br.ServeHTTP(w, r)
	}))
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
func (tb *testBroker) call(method, path, bearer string, body any, want int) map[string]any {
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
func (tb *testBroker) agent(scope ...string) (string, string) {
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

// revokeToken revokes one token by its jti.
func (tb *testBroker) revokeToken(tok string) {
	tb.t.Helper()
	tb.call("POST", "/v1/revoke", tb.admin, map[string]string{"level": "token", "target": tokenJTI(tb.t, tok)}, 200)
}

// tokenJTI reads a token's jti (without verifying it).
func tokenJTI(t testing.TB, tok string) string {
	t.Helper()
	lc, err := precheck(tok, time.Now())
	require.NoError(t, err)
	return lc.Jti
}

// fakeBroker is an upstream-like broker the test controls: a
// /v1/token/validate endpoint that by default confirms any token,
// answering with the token's own payload as claims (it checks no
// signature: only for tests that must control the broker's behaviour),
// an app login that accepts anything, and 404 for everything else (no
// JWKS, no revocation feed), as the upstream broker answers.
type fakeBroker struct {
	Server    *httptest.Server
	calls     atomic.Int64 // validate calls
	jwksCalls atomic.Int64
	mu        sync.Mutex
	answer    func(w http.ResponseWriter, r *http.Request, payload []byte)
	stop      chan struct{}
}

// newFakeBroker starts a fake broker answering valid:true.
func newFakeBroker(t testing.TB) *fakeBroker {
	f := &fakeBroker{stop: make(chan struct{}), answer: fakeValid}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/.well-known/jwks.json":
			f.jwksCalls.Add(1)
			fakeStatus(http.StatusNotFound)(w, r, nil)
			return
		case r.Method == http.MethodPost && r.URL.Path == "/v1/app/auth":
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"access_token":"upstream-app-token","expires_in":1800,"token_type":"Bearer","scopes":["read:revocations:*"]}`))
			return
		case r.URL.Path != validatePath:
			fakeStatus(http.StatusNotFound)(w, r, nil)
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
	}))
	t.Cleanup(f.Server.Close)
	t.Cleanup(func() { close(f.stop) }) // runs first: releases hanging handlers
	return f
}

// Calls is the number of validate calls the fake broker received.
func (f *fakeBroker) Calls() int64 { return f.calls.Load() }

// Set changes how the fake broker answers.
func (f *fakeBroker) Set(answer func(w http.ResponseWriter, r *http.Request, payload []byte)) {
	f.mu.Lock()
	f.answer = answer
	f.mu.Unlock()
}

// Hang is an answer that never comes (until the client gives up).
func (f *fakeBroker) Hang(w http.ResponseWriter, r *http.Request, _ []byte) {
	select {
	case <-r.Context().Done():
	case <-f.stop:
	}
}

// fakeValid confirms the token with its own payload as claims.
func fakeValid(w http.ResponseWriter, _ *http.Request, payload []byte) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"valid":true,"claims":` + string(payload) + `}`))
}

// fakeEdited confirms the token with its own payload changed by change.
func fakeEdited(change func(m map[string]any)) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, r *http.Request, p []byte) {
		var m map[string]any
		_ = json.Unmarshal(p, &m)
		change(m)
		out, _ := json.Marshal(m)
		fakeValid(w, r, out)
	}
}

// fakeBody answers 200 with the given body.
func fakeBody(body string) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(body))
	}
}

// fakeStatus answers with a status and a problem body.
func fakeStatus(code int) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(code)
		_, _ = w.Write([]byte(`{"type":"urn:agentwrit:error:internal_error","status":500}`))
	}
}

// forge flips a bit of tok's signature.
func forge(tok string) string {
	i := strings.LastIndexByte(tok, '.')
	sig, _ := base64.RawURLEncoding.DecodeString(tok[i+1:])
	sig[0] ^= 1
	return tok[:i+1] + base64.RawURLEncoding.EncodeToString(sig)
}

// fakeToken is a well-formed EdDSA JWT (signed by a throwaway key) with
// the given scopes, expiring at exp.
func fakeToken(t testing.TB, exp time.Time, scope ...string) string {
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

// recorder is an Observer (and HealthObserver) that counts events.
type recorder struct {
	hits, misses, evictions, staleHits atomic.Int64
	calls                              [NumOutcomes]atomic.Int64
	connected, disconnected, stale     atomic.Int64
	keysOK, keysFailed                 atomic.Int64
	breakerOpened, clientLimited       atomic.Int64
}

func (r *recorder) FeedConnected()    { r.connected.Add(1) }
func (r *recorder) FeedDisconnected() { r.disconnected.Add(1) }
func (r *recorder) FeedStale()        { r.stale.Add(1) }
func (r *recorder) BreakerOpened()    { r.breakerOpened.Add(1) }
func (r *recorder) ClientLimited()    { r.clientLimited.Add(1) }
func (r *recorder) KeysRefreshed(ok bool) {
	if ok {
		r.keysOK.Add(1)
	} else {
		r.keysFailed.Add(1)
	}
}

func (r *recorder) CacheHit()                       { r.hits.Add(1) }
func (r *recorder) CacheMiss()                      { r.misses.Add(1) }
func (r *recorder) CacheEviction()                  { r.evictions.Add(1) }
func (r *recorder) StaleHit()                       { r.staleHits.Add(1) }
func (r *recorder) Call(o Outcome, _ time.Duration) { r.calls[o].Add(1) }

// outcomes returns the number of calls that ended with o.
func (r *recorder) outcomes(o Outcome) int64 { return r.calls[o].Load() }

// newTestValidator builds a Validator on o, counting into a recorder, and
// closes it when the test ends.
func newTestValidator(t testing.TB, o Options) (*Validator, *recorder) {
	t.Helper()
	rec := new(recorder)
	o.Observer = rec
	v, err := New(o)
	require.NoError(t, err)
	t.Cleanup(v.Close)
	return v, rec
}

// requireUnavailable: no usable answer, nothing allowed.
func requireUnavailable(t *testing.T, c *broker.Claims, err error, msg ...any) {
	t.Helper()
	require.ErrorIs(t, err, ErrUnavailable, msg...)
	require.Nil(t, c, msg...)
}

// requireInvalid: a definitive no, nothing allowed.
func requireInvalid(t *testing.T, c *broker.Claims, err error, msg ...any) {
	t.Helper()
	require.ErrorIs(t, err, broker.ErrInvalidToken, msg...)
	require.NotErrorIs(t, err, ErrUnavailable, msg...)
	require.Nil(t, c, msg...)
}

// requireValid: the token's claims, confirmed.
func requireValid(t *testing.T, tok string, c *broker.Claims, err error, msg ...any) {
	t.Helper()
	require.NoError(t, err, msg...)
	require.NotNil(t, c, msg...)
	require.Equal(t, tokenJTI(t, tok), c.Jti, msg...)
}

// eventually polls cond every 50ms for up to d.
func eventually(t testing.TB, d time.Duration, cond func() bool, msg string) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < d {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("not within %s: %s", d, msg)
	return 0
}

// eventuallyRefused validates tok until it is refused (within 3s), which
// check must then accept; every answer before is a valid one.
func eventuallyRefused(t *testing.T, v *Validator, tok string, check func(*testing.T, *broker.Claims, error, ...any), msg string) time.Duration {
	t.Helper()
	return eventually(t, 3*time.Second, func() bool {
		c, err := v.Validate(context.Background(), tok)
		if err == nil {
			requireValid(t, tok, c, nil)
			return false
		}
		check(t, c, err, msg)
		return true
	}, msg)
}
