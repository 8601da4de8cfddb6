package caddymodule

import (
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

func init() {
	caddy.RegisterModule(BrokerHandler{})
	httpcaddyfile.RegisterHandlerDirective("agentwrit_broker", parseBrokerHandler)
	httpcaddyfile.RegisterDirectiveOrder("agentwrit_broker", httpcaddyfile.Before, "respond")
}

// BrokerHandler serves the embedded broker's AgentWrit API (/v1/*) and its
// public keys (/.well-known/jwks.json). It answers every request it gets,
// like respond; requests outside the API get a problem+json 404.
type BrokerHandler struct {
	broker *broker.Broker
}

var (
	_ caddy.Provisioner           = (*BrokerHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*BrokerHandler)(nil)
	_ caddyfile.Unmarshaler       = (*BrokerHandler)(nil)
)

// CaddyModule returns the Caddy module information.
func (BrokerHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.agentwrit_broker", New: func() caddy.Module { return new(BrokerHandler) }}
}

// Provision finds the agentwrit app's broker.
func (h *BrokerHandler) Provision(ctx caddy.Context) error {
	app, err := ctx.AppIfConfigured("agentwrit")
	if errors.Is(err, caddy.ErrNotConfigured) {
		return errors.New("agentwrit_broker: needs the agentwrit global option (the embedded broker's configuration)")
	}
	if err != nil {
		return err
	}
	h.broker = app.(*App).broker
	return nil
}

// ServeHTTP serves the broker API.
func (h *BrokerHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	h.broker.ServeHTTP(w, r)
	return nil
}

// UnmarshalCaddyfile: the directive takes no arguments.
//
//	agentwrit_broker [<matcher>]
func (h *BrokerHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() || d.NextBlock(0) {
		return d.Err("agentwrit_broker takes no arguments; configure the broker in the agentwrit global option")
	}
	return nil
}

func parseBrokerHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(BrokerHandler)
	return m, m.UnmarshalCaddyfile(h.Dispenser)
}
