package caddymodule

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// TestDenialLogLine: one structured line per denial with reason, rule,
// agent and a token hash prefix, and never the token itself.
func TestDenialLogLine(t *testing.T) {
	br, tok := benchBroker(t, "read:orders:1")
	rules := []scopemap.Rule{{Methods: []string{"GET"}, Pattern: "/orders/{id}", Scopes: []string{"read:orders:{id}"}}}
	core, logs := observer.New(zapcore.DebugLevel)
	h := testHandler(t, &Handler{Rules: rules}, nil, appFor(br), testCollectors(t, prometheus.NewRegistry()), zap.New(core))
	req := httptest.NewRequest("GET", "/orders/2", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	req = req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	w := httptest.NewRecorder()
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	if err := h.ServeHTTP(w, req, next); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusForbidden {
		t.Fatalf("status %d", w.Code)
	}
	entries := logs.All()
	if len(entries) != 1 {
		t.Fatalf("%d log lines, want 1", len(entries))
	}
	e := entries[0]
	if e.Level != zapcore.InfoLevel {
		t.Errorf("level %v, want info for an authenticated agent", e.Level)
	}
	f := e.ContextMap()
	if f["reason"] != "insufficient_scope" || !strings.Contains(f["rule"].(string), "/orders/{id}") ||
		!strings.HasPrefix(f["agent_id"].(string), "spiffe://") || len(f["token_sha256_prefix"].(string)) != 12 {
		t.Errorf("log fields: %v", f)
	}
	for k, v := range f {
		if s, ok := v.(string); ok && strings.Contains(s, tok[:40]) {
			t.Errorf("field %s carries the token", k)
		}
	}
}
