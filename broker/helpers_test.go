package broker

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

const testAdminSecret = "test-admin-secret"

// testAdminHash is a low-cost bcrypt of testAdminSecret so tests do not pay
// bcrypt cost 12 for every broker they make.
var testAdminHash = func() string {
	h, err := bcrypt.GenerateFromPassword([]byte(testAdminSecret), bcrypt.MinCost)
	if err != nil {
		panic(err)
	}
	return string(h)
}()

// testEnv is a broker over a fresh database plus helpers to call it.
type testEnv struct {
	t      *testing.T
	store  *Store
	broker *Broker
	dbPath string
}

func newTestEnv(t *testing.T, mutate ...func(*Config)) *testEnv {
	t.Helper()
	path := filepath.Join(t.TempDir(), "broker.db")
	store, err := Open(context.Background(), path)
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	cfg := Config{AdminSecret: testAdminHash}
	for _, m := range mutate {
		m(&cfg)
	}
	b, err := New(store, cfg)
	require.NoError(t, err)
	return &testEnv{t: t, store: store, broker: b, dbPath: path}
}

// do sends a request straight to the broker's handler.
func (e *testEnv) do(method, path, bearer string, body any) *httptest.ResponseRecorder {
	e.t.Helper()
	var rd io.Reader
	switch v := body.(type) {
	case nil:
	case string:
		rd = bytes.NewBufferString(v)
	case []byte:
		rd = bytes.NewReader(v)
	default:
		b, err := json.Marshal(v)
		require.NoError(e.t, err)
		rd = bytes.NewReader(b)
	}
	req := httptest.NewRequest(method, path, rd)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	rec := httptest.NewRecorder()
	e.broker.ServeHTTP(rec, req)
	return rec
}

// decode parses a JSON response body into a map.
func decode(t *testing.T, rec *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &m), "body: %s", rec.Body.String())
	return m
}

// requireProblem asserts a problem+json response with status and error_code.
func requireProblem(t *testing.T, rec *httptest.ResponseRecorder, status int, code, detail string) {
	t.Helper()
	require.Equal(t, status, rec.Code, "body: %s", rec.Body.String())
	require.Equal(t, "application/problem+json", rec.Header().Get("Content-Type"))
	m := decode(t, rec)
	require.Equal(t, code, m["error_code"])
	require.Equal(t, "urn:agentwrit:error:"+code, m["type"])
	if detail != "" {
		require.Equal(t, detail, m["detail"])
	}
}

func (e *testEnv) adminToken() string {
	e.t.Helper()
	rec := e.do("POST", "/v1/admin/auth", "", map[string]string{"secret": testAdminSecret})
	require.Equal(e.t, http.StatusOK, rec.Code, rec.Body.String())
	return decode(e.t, rec)["access_token"].(string)
}

// launchToken creates a launch token through the admin route.
func (e *testEnv) launchToken(body map[string]any) string {
	e.t.Helper()
	if body == nil {
		body = map[string]any{}
	}
	if _, ok := body["agent_name"]; !ok {
		body["agent_name"] = "test-agent"
	}
	if _, ok := body["allowed_scope"]; !ok {
		body["allowed_scope"] = []string{"read:data:*"}
	}
	rec := e.do("POST", "/v1/admin/launch-tokens", e.adminToken(), body)
	require.Equal(e.t, http.StatusCreated, rec.Code, rec.Body.String())
	return decode(e.t, rec)["launch_token"].(string)
}

func (e *testEnv) nonce() string {
	e.t.Helper()
	rec := e.do("GET", "/v1/challenge", "", nil)
	require.Equal(e.t, http.StatusOK, rec.Code)
	return decode(e.t, rec)["nonce"].(string)
}

// registration is a signed /v1/register body for a fresh key.
func (e *testEnv) registration(launch string, scope ...string) map[string]any {
	e.t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(e.t, err)
	n := e.nonce()
	nb, err := hex.DecodeString(n)
	require.NoError(e.t, err)
	if len(scope) == 0 {
		scope = []string{"read:data:x"}
	}
	return map[string]any{
		"launch_token": launch, "nonce": n,
		"public_key": base64.StdEncoding.EncodeToString(pub),
		"signature":  base64.StdEncoding.EncodeToString(ed25519.Sign(priv, nb)),
		"orch_id":    "orch-1", "task_id": "task-1", "requested_scope": scope,
	}
}

// agent registers a new agent and returns its ID and token.
func (e *testEnv) agent(scope ...string) (id, token string) {
	e.t.Helper()
	if len(scope) == 0 {
		scope = []string{"read:data:x"}
	}
	allowed := make([]string, len(scope))
	copy(allowed, scope)
	rec := e.do("POST", "/v1/register", "", e.registration(e.launchToken(map[string]any{"allowed_scope": allowed}), scope...))
	require.Equal(e.t, http.StatusOK, rec.Code, rec.Body.String())
	m := decode(e.t, rec)
	return m["agent_id"].(string), m["access_token"].(string)
}
