package caddymodule

import (
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

func init() {
	caddy.RegisterModule(BrokerHandler{})
}

// BrokerHandler serves the embedded broker's AgentWrit API (/v1/*) and its
// public keys (/.well-known/jwks.json). It answers every request it gets,
// like respond; requests outside the API get a problem+json 404.
type BrokerHandler struct {
	app *App
}

var (
	_ caddy.Provisioner           = (*BrokerHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*BrokerHandler)(nil)
)

// CaddyModule returns the Caddy module information.
func (BrokerHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.agentwrit_broker", New: func() caddy.Module { return new(BrokerHandler) }}
}

// Provision finds the agentwrit app.
func (h *BrokerHandler) Provision(ctx caddy.Context) error {
	app, err := appOf(ctx)
	if err != nil {
		return err
	}
	if app == nil {
		return errors.New("agentwrit_broker: needs the agentwrit global option (the embedded broker's configuration)")
	}
	h.app = app
	return nil
}

// ServeHTTP serves the broker API.
func (h *BrokerHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	b, err := h.app.Broker(r.Context())
	if err != nil {
		w.Header().Set("Retry-After", "1")
		broker.WriteProblem(w, r, http.StatusServiceUnavailable, broker.ErrTypeUnavailable, "the broker is not running")
		return nil
	}
	b.ServeHTTP(w, r)
	return nil
}
