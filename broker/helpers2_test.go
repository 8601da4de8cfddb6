package broker

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

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
