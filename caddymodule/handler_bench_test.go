package caddymodule

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// benchBroker is an embedded broker (brokertest's, whose HTTP server only
// registers the agent) plus a registered agent's token.
func benchBroker(b testing.TB, scope ...string) (*broker.Broker, string) {
	b.Helper()
	s := brokertest.New(b, brokertest.Options{})
	return s.Broker, s.Agent(b, scope...).Token
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

// benchAllowed runs benchRequests on an embedded-mode handler with usage.
func benchAllowed(b *testing.B, usage *bool) {
	br, tok := benchBroker(b, "read:orders:*")
	rules := []scopemap.Rule{
		{Methods: []string{"GET"}, Pattern: "/orders/{id}", Scopes: []string{"read:orders:{id}"}},
		{Methods: []string{"POST"}, Pattern: "/orders/{id}", Scopes: []string{"write:orders:{id}"}},
		{Public: true, Methods: []string{"GET"}, Pattern: "/healthz"},
	}
	h := testHandler(b, &Handler{Rules: rules, Usage: usage}, nil, appFor(br), testCollectors(b, prometheus.NewRegistry()), nil)
	benchRequests(b, h, tok)
}

// benchRequests measures h's allowed GET /orders/42 with tok: rule lookup,
// template expansion, validation, scope check, identity headers and
// placeholders. The next handler does nothing.
func benchRequests(b *testing.B, h *Handler, tok string) {
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
