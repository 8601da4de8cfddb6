package caddymodule

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// benchBroker is an embedded broker plus a registered agent's token.
func benchBroker(b testing.TB, scope ...string) (*broker.Broker, string) {
	b.Helper()
	store := brokertest.OpenStore(b, "")
	hash, _ := bcrypt.GenerateFromPassword([]byte("s"), bcrypt.MinCost)
	br, err := broker.New(store, broker.Config{AdminSecret: string(hash)})
	if err != nil {
		b.Fatal(err)
	}
	post := func(path, bearer string, body any) map[string]any {
		raw, _ := json.Marshal(body)
		req := httptest.NewRequest("POST", path, strings.NewReader(string(raw)))
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		rec := httptest.NewRecorder()
		br.ServeHTTP(rec, req)
		var m map[string]any
		_ = json.Unmarshal(rec.Body.Bytes(), &m)
		return m
	}
	admin := post("/v1/admin/auth", "", map[string]string{"secret": "s"})["access_token"].(string)
	launch := post("/v1/admin/launch-tokens", admin, map[string]any{"agent_name": "bench", "allowed_scope": scope})["launch_token"].(string)
	rec := httptest.NewRecorder()
	br.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/challenge", nil))
	var ch map[string]any
	_ = json.Unmarshal(rec.Body.Bytes(), &ch)
	nonce := ch["nonce"].(string)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	nb, _ := hex.DecodeString(nonce)
	reg := post("/v1/register", "", map[string]any{
		"launch_token": launch, "nonce": nonce, "public_key": base64.StdEncoding.EncodeToString(pub),
		"signature": base64.StdEncoding.EncodeToString(ed25519.Sign(priv, nb)),
		"orch_id":   "o", "task_id": "t", "requested_scope": scope,
	})
	return br, reg["access_token"].(string)
}

// BenchmarkHandlerAllowed is the enforcement handler's allowed path in
// embedded mode with a cached token: rule lookup, template expansion,
// verification cache hit, live revocation check, scope check, identity
// headers and placeholders. The next handler does nothing.
func BenchmarkHandlerAllowed(b *testing.B) { benchAllowed(b, nil) }

// BenchmarkHandlerAllowedUsageOff is the same path with `usage off`: the
// difference is what counting scope usage costs.
func BenchmarkHandlerAllowedUsageOff(b *testing.B) {
	off := false
	benchAllowed(b, &off)
}

func benchAllowed(b *testing.B, usage *bool) {
	br, tok := benchBroker(b, "read:orders:*")
	rules := []scopemap.Rule{
		{Methods: []string{"GET"}, Pattern: "/orders/{id}", Scopes: []string{"read:orders:{id}"}},
		{Methods: []string{"POST"}, Pattern: "/orders/{id}", Scopes: []string{"write:orders:{id}"}},
		{Public: true, Methods: []string{"GET"}, Pattern: "/healthz"},
	}
	h := testHandler(b, &Handler{Rules: rules, Usage: usage}, nil, appFor(br), testCollectors(b, prometheus.NewRegistry()), nil)
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	req := httptest.NewRequest("GET", "/orders/42", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	w := httptest.NewRecorder()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		r := req.Clone(context.WithValue(req.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
		if err := h.ServeHTTP(w, r, next); err != nil {
			b.Fatal(err)
		}
		if r.Header.Get(HeaderAgentID) == "" {
			b.Fatalf("request was not allowed: %d %s", w.Code, w.Body.String())
		}
	}
}

// BenchmarkRequestSetup is what BenchmarkHandlerAllowed spends outside the
// handler (cloning the request, a fresh replacer), to subtract.
func BenchmarkRequestSetup(b *testing.B) {
	req := httptest.NewRequest("GET", "/orders/42", nil)
	req.Header.Set("Authorization", "Bearer x")
	b.ReportAllocs()
	for b.Loop() {
		_ = req.Clone(context.WithValue(req.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	}
}
