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
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

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
	admin  string // cached admin token, see cachedAdmin
}

func newTestEnv(t *testing.T, mutate ...func(*Config)) *testEnv {
	t.Helper()
	e := &testEnv{t: t, dbPath: filepath.Join(t.TempDir(), "broker.db")}
	e.open(mutate...)
	return e
}

// openStore opens a Store on the database file at path.
func openStore(t testing.TB, path string) *Store {
	t.Helper()
	db, err := openTestDatabase(context.Background(), path)
	require.NoError(t, err)
	store, err := NewStore(context.Background(), db, StoreOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	return store
}

// open opens the store and a broker configured by mutate.
func (e *testEnv) open(mutate ...func(*Config)) {
	e.t.Helper()
	e.store = openStore(e.t, e.dbPath)
	cfg := Config{AdminSecret: testAdminHash}
	for _, m := range mutate {
		m(&cfg)
	}
	b, err := New(e.store, cfg)
	require.NoError(e.t, err)
	e.broker = b
}

// revoke revokes through the store, as the handlers do.
func (e *testEnv) revoke(level, target string) error {
	_, err := e.store.revoke(context.Background(), level, target, time.Now())
	return err
}

// verifyAudit recomputes the stored chain.
func (e *testEnv) verifyAudit() error {
	_, err := VerifyAudit(context.Background(), e.store.db)
	return err
}

// auditSeq is the chain's length.
func (e *testEnv) auditSeq() int64 {
	e.t.Helper()
	h, err := e.store.db.AuditHead(context.Background())
	require.NoError(e.t, err)
	return h.Seq
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

// testClock is a settable clock for Config.Now.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock { return &testClock{t: time.Unix(1_800_000_000, 0)} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// withClock makes the broker run on c.
func withClock(c *testClock) func(*Config) { return func(cfg *Config) { cfg.Now = c.Now } }

// doReq sends a request built by the caller (headers, TLS, RemoteAddr).
func (e *testEnv) doReq(req *http.Request) *httptest.ResponseRecorder {
	e.t.Helper()
	rec := httptest.NewRecorder()
	e.broker.ServeHTTP(rec, req)
	return rec
}

// restart closes the store and opens a new store and broker on the same
// database, configured by mutate as newTestEnv would.
func (e *testEnv) restart(mutate ...func(*Config)) {
	e.t.Helper()
	require.NoError(e.t, e.store.Close())
	e.open(mutate...)
}

// jsonKeys returns the top-level member names of a JSON object, in order.
func jsonKeys(t *testing.T, raw []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(raw))
	tok, err := dec.Token()
	require.NoError(t, err)
	require.Equal(t, json.Delim('{'), tok, "not an object: %s", raw)
	var keys []string
	for dec.More() {
		k, err := dec.Token()
		require.NoError(t, err)
		keys = append(keys, k.(string))
		var skip json.RawMessage
		require.NoError(t, dec.Decode(&skip))
	}
	return keys
}

// rawField returns the raw JSON of one member of a JSON object.
func rawField(t *testing.T, raw []byte, name string) []byte {
	t.Helper()
	var m map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(raw, &m), "body: %s", raw)
	v, ok := m[name]
	require.True(t, ok, "no %q in %s", name, raw)
	return v
}

// claimsOf decodes a JWT payload without verifying it.
func claimsOf(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	require.Len(t, parts, 3)
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	return m
}

// payloadKeys returns the claim names of a JWT payload in serialization order.
func payloadKeys(t *testing.T, tok string) []string {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	require.NoError(t, err)
	return jsonKeys(t, b)
}

// events returns every audit event of the given type, oldest first.
func (e *testEnv) events(eventType string) []Event {
	e.t.Helper()
	evs, _, err := e.store.db.QueryAudit(context.Background(), AuditFilter{EventType: eventType})
	require.NoError(e.t, err)
	return evs
}

// lastEvent returns the newest audit event of the given type.
func (e *testEnv) lastEvent(eventType string) Event {
	e.t.Helper()
	evs := e.events(eventType)
	require.NotEmpty(e.t, evs, "no %s event", eventType)
	return evs[len(evs)-1]
}

// auditCount is the number of events in the chain.
func (e *testEnv) auditCount() int {
	e.t.Helper()
	_, n, err := e.store.db.QueryAudit(context.Background(), AuditFilter{Limit: 1})
	require.NoError(e.t, err)
	return n
}

// testApp is an app registered through the admin API.
type testApp struct {
	ID, ClientID, Secret string
}

// createApp registers an app (bcrypt cost 12: about a quarter second).
func (e *testEnv) createApp(name string, scopes []string) testApp {
	e.t.Helper()
	rec := e.do("POST", "/v1/admin/apps", e.adminToken(), map[string]any{"name": name, "scopes": scopes})
	require.Equal(e.t, http.StatusCreated, rec.Code, rec.Body.String())
	m := decode(e.t, rec)
	return testApp{m["app_id"].(string), m["client_id"].(string), m["client_secret"].(string)}
}

// appToken authenticates as the app.
func (e *testEnv) appToken(a testApp) string {
	e.t.Helper()
	rec := e.do("POST", "/v1/app/auth", "", map[string]string{"client_id": a.ClientID, "client_secret": a.Secret})
	require.Equal(e.t, http.StatusOK, rec.Code, rec.Body.String())
	return decode(e.t, rec)["access_token"].(string)
}

// issueToken signs claims directly with the broker's key, for subjects the
// API cannot produce.
func (e *testEnv) issueToken(c Claims, ttl int64) string {
	e.t.Helper()
	tok, _, err := e.broker.issue(c, ttl)
	require.NoError(e.t, err)
	return tok
}

// requireSecurityHeaders asserts upstream's security headers (without HSTS).
func requireSecurityHeaders(t *testing.T, rec *httptest.ResponseRecorder) {
	t.Helper()
	require.Equal(t, "nosniff", rec.Header().Get("X-Content-Type-Options"))
	require.Equal(t, "no-store", rec.Header().Get("Cache-Control"))
	require.Equal(t, "DENY", rec.Header().Get("X-Frame-Options"))
}

// cachedAdmin returns an admin token, authenticating only when the cached
// one no longer verifies, so tests stay clear of the admin rate limit.
func (e *testEnv) cachedAdmin() string {
	e.t.Helper()
	if e.admin != "" {
		if _, err := e.broker.Verify(context.Background(), e.admin); err == nil {
			return e.admin
		}
	}
	e.admin = e.adminToken()
	return e.admin
}

// mkLaunch creates a launch token with the cached admin token.
func (e *testEnv) mkLaunch(body map[string]any) string {
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
	rec := e.do("POST", "/v1/admin/launch-tokens", e.cachedAdmin(), body)
	require.Equal(e.t, http.StatusCreated, rec.Code, rec.Body.String())
	return decode(e.t, rec)["launch_token"].(string)
}

// mkAgent registers an agent allowed exactly scope, with a launch token of
// the given max_ttl (0: default), and returns its ID and token.
func (e *testEnv) mkAgent(maxTTL int, scope ...string) (id, token string) {
	e.t.Helper()
	body := map[string]any{"allowed_scope": scope}
	if maxTTL > 0 {
		body["max_ttl"] = maxTTL
	}
	rec := e.do("POST", "/v1/register", "", e.registration(e.mkLaunch(body), scope...))
	require.Equal(e.t, http.StatusOK, rec.Code, rec.Body.String())
	m := decode(e.t, rec)
	return m["agent_id"].(string), m["access_token"].(string)
}

// newRequest builds a request with a string body ("" for none).
func newRequest(method, path, body string) *http.Request {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	return httptest.NewRequest(method, path, rd)
}

// b64u is base64url without padding, the JWS segment encoding.
func b64u(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// signJWS builds a compact JWS over raw header and payload JSON, signed with
// key exactly as given: no validation, so tests can forge any shape.
func signJWS(key ed25519.PrivateKey, header, payload string) string {
	in := b64u([]byte(header)) + "." + b64u([]byte(payload))
	return in + "." + b64u(ed25519.Sign(key, []byte(in)))
}

// ourHeader is the broker's exact token header.
func (e *testEnv) ourHeader() string {
	return `{"alg":"EdDSA","typ":"JWT","kid":"` + e.broker.KeyID() + `"}`
}

// forge signs raw header and payload JSON with the broker's own key.
func (e *testEnv) forge(header, payload string) string {
	return signJWS(e.broker.signer().key, header, payload)
}

// payloadAt is a minimal valid claims object for a token checked at now.
func payloadAt(now int64, extra string) string {
	s := `{"iss":"","sub":"spiffe://agentwrit.local/agent/o/t/0123456789abcdef","exp":` + strconv.FormatInt(now+300, 10) +
		`,"nbf":` + strconv.FormatInt(now, 10) + `,"iat":` + strconv.FormatInt(now, 10) +
		`,"jti":"0123456789abcdef0123456789abcdef","scope":["read:data:x"]`
	if extra != "" {
		s += "," + extra
	}
	return s + "}"
}

// serve runs one request through the handler without touching testing.T,
// so it is safe from any goroutine.
func serve(b *Broker, method, path, bearer string, body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	rec := httptest.NewRecorder()
	b.ServeHTTP(rec, req)
	return rec
}

// mustJSON marshals v or fails the test.
func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}

// okStatus reports whether a status is a 2xx.
func okStatus(code int) bool { return code >= http.StatusOK && code < http.StatusMultipleChoices }
