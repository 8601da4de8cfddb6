package caddymodule

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// appFor is an agentwrit app whose broker is already running.
func appFor(b *broker.Broker) *App {
	a := &App{run: &running{ready: make(chan struct{})}}
	a.run.broker.Store(b)
	close(a.run.ready)
	return a
}

// testCollectors are collectors of a test's own, registered in reg.
func testCollectors(t testing.TB, reg prometheus.Registerer) *collectors {
	t.Helper()
	c := newCollectors()
	for _, col := range c.all {
		if err := reg.Register(col); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// testHandler finishes h as Provision does, around v and app (either may
// be nil: then the embedded broker of app validates).
func testHandler(t testing.TB, h *Handler, v validator, app *App, col *collectors, logger *zap.Logger) *Handler {
	t.Helper()
	if v == nil {
		v = embedded{app}
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	if err := h.setup(v, app, col, logger); err != nil {
		t.Fatal(err)
	}
	return h
}
