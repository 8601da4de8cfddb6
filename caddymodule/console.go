package caddymodule

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/remote"
	"github.com/caddy-agentwrit/caddy-agentwrit/caddymodule/console"
)

func init() {
	caddy.RegisterModule(ConsoleHandler{})
}

// ConsoleHandler serves the operator console (docs/console.md): a browser
// UI at the site root whose API calls go to the embedded broker of the
// agentwrit app or, when Remote is set, to a remote broker. Like respond,
// it answers every request it gets.
type ConsoleHandler struct {
	// Remote is the base URL of a remote broker; empty means the
	// embedded one.
	Remote string `json:"remote,omitempty"`

	handler http.Handler
}

var (
	_ caddy.Provisioner           = (*ConsoleHandler)(nil)
	_ caddy.Validator             = (*ConsoleHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*ConsoleHandler)(nil)
)

// CaddyModule returns the Caddy module information.
func (ConsoleHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.agentwrit_console", New: func() caddy.Module { return new(ConsoleHandler) }}
}

// Provision connects the console to its broker.
func (h *ConsoleHandler) Provision(ctx caddy.Context) error {
	if h.Remote != "" {
		u, err := parseRemote(h.Remote)
		if err != nil {
			return err
		}
		h.handler = console.New(console.Remote(u))
		return nil
	}
	app, err := appOf(ctx)
	if err != nil {
		return err
	}
	if app == nil {
		return errors.New("agentwrit_console: needs the agentwrit global option (the embedded broker), or a remote broker URL")
	}
	h.handler = console.New(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := app.Broker(r.Context())
		if err != nil {
			w.Header().Set("Retry-After", "1")
			broker.WriteProblem(w, r, http.StatusServiceUnavailable, broker.ErrTypeUnavailable, "the broker is not running")
			return
		}
		b.ServeHTTP(w, r)
	}))
	return nil
}

// Validate checks the remote URL.
func (h *ConsoleHandler) Validate() error {
	if h.Remote == "" {
		return nil
	}
	_, err := parseRemote(h.Remote)
	return err
}

// parseRemote accepts an absolute http(s) URL without query or fragment.
func parseRemote(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	switch { // the URL shown redacted: credentials in it are one of the mistakes
	case err != nil: // not url.Parse's words: they quote the wrong part, maybe a password
		return nil, errors.New("agentwrit_console: the remote broker URL does not parse as a URL")
	case u.Scheme != "http" && u.Scheme != "https", u.Host == "":
		return nil, fmt.Errorf("agentwrit_console: remote broker URL %q must be http:// or https:// with a host", remote.RedactURL(s))
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return nil, fmt.Errorf("agentwrit_console: remote broker URL %q must have no query, fragment or user info", remote.RedactURL(s))
	}
	return u, nil
}

// ServeHTTP serves the console.
func (h *ConsoleHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	h.handler.ServeHTTP(w, r)
	return nil
}
