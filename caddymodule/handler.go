package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/remote"
	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Values of Handler.Unmapped and Handler.Mode.
const (
	UnmappedDeny          = "deny"
	UnmappedAuthenticated = "authenticated"
	ModeEnforce           = "enforce"
	ModeReport            = "report"
)

// DefaultRefuseBodyOn are the methods whose requests may not carry a body
// unless refuse_body_on says otherwise: HTTP gives a body on them no
// meaning, and a backend that never reads one would take its bytes for
// the next request on the connection, one the gateway never checked.
var DefaultRefuseBodyOn = []string{"GET", "HEAD", "OPTIONS", "TRACE"}

// Handler enforces AgentWrit tokens in front of the next handler: it
// checks that the path is canonical, finds the route's rule, validates the
// Bearer token and checks that its scopes cover what the rule requires.
// Allowed requests reach the next handler with the agent's identity in
// X-AgentWrit-* headers and placeholders.
type Handler struct {
	// Rules map method and path to the scopes a request needs.
	Rules []scopemap.Rule `json:"rules,omitempty"`
	// Unmapped decides routes no rule maps: "deny" (default, 403) or
	// "authenticated" (any valid token).
	Unmapped string `json:"unmapped,omitempty"`
	// ForwardToken keeps the Authorization header for the backend
	// (default true); false strips it.
	ForwardToken *bool `json:"forward_token,omitempty"`
	// Mode "report" decides, logs, audits and counts, but lets every
	// request through; "enforce" (default) acts on the decision.
	Mode string `json:"mode,omitempty"`
	// RefuseBodyOn lists the methods whose requests are refused (400)
	// when they carry a body, on every route (default
	// DefaultRefuseBodyOn; an empty list refuses none). A pointer, so that
	// the empty list survives the JSON round trip.
	RefuseBodyOn *[]string `json:"refuse_body_on,omitempty"`
	// Broker, when set, validates tokens through an external broker
	// (remote mode); nil uses the embedded broker of the agentwrit app.
	Broker *RemoteBroker `json:"broker,omitempty"`
	// Usage counts every decision about a verified token for the scope
	// usage report (default true); false turns it off for this handler.
	Usage *bool `json:"usage,omitempty"`

	routes    *scopemap.Map
	validator validator
	remote    *remote.Validator // remote mode only, for Cleanup
	app       *App              // the agentwrit app, if configured: the audit chain and its audience
	audience  string
	noBody    []string
	metrics   *collectors
	usage     *broker.UsageRecorder // remote mode's own; embedded mode counts into the broker's
	usageOff  bool
	allowed   prometheus.Counter // hot-path counters, resolved once
	public    prometheus.Counter
	logger    *zap.Logger
}

var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.agentwrit", New: func() caddy.Module { return new(Handler) }}
}

// validator turns a bearer token into verified claims. On
// broker.ErrRevoked it may return the token's claims too, for the log.
type validator interface {
	Validate(ctx context.Context, token string) (*broker.Claims, error)
}

// embedded validates in-process against the agentwrit app's broker: a map
// lookup for a token seen before, and always a live revocation check.
type embedded struct{ app *App }

func (e embedded) Validate(ctx context.Context, tok string) (*broker.Claims, error) {
	b, err := e.app.Broker(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", broker.ErrUnavailable, err)
	}
	return b.Verify(ctx, tok)
}

// Provision compiles the rules and connects to the embedded broker, or, in
// remote mode, sets up the client of the remote one (without contacting
// it: it may sit behind this same Caddy, not yet listening). In remote mode
// the agentwrit app is optional: if configured, denials go to its audit
// chain and its audience is required; otherwise neither applies.
func (h *Handler) Provision(ctx caddy.Context) error {
	app, err := appOf(ctx)
	if err != nil {
		return err
	}
	if app == nil && h.Broker == nil {
		return errors.New("agentwrit: no broker: add the agentwrit global option to run the embedded broker, or use broker <url> for a remote one")
	}
	col, err := loadCollectors(ctx.GetMetricsRegistry())
	if err != nil {
		return fmt.Errorf("agentwrit: metrics: %w", err)
	}
	var v validator
	if h.Broker == nil {
		v = embedded{app}
	} else if h.remote, err = h.Broker.newValidator(col.remote, ctx.Slogger(), ctx.GetMetricsRegistry()); err != nil {
		col.release()
		return fmt.Errorf("agentwrit: %w", err)
	} else {
		v = h.remote
	}
	if err := h.setup(v, app, col, ctx.Logger()); err != nil {
		h.Cleanup()
		return err
	}
	if h.remote != nil && !h.usageOff {
		h.usage = h.Broker.usageRecorder(h.remote, ctx.Slogger())
	}
	return nil
}

// setup finishes a Handler around v: what Provision and the tests share.
func (h *Handler) setup(v validator, app *App, col *collectors, logger *zap.Logger) error {
	var err error
	if h.routes, err = scopemap.Compile(h.Rules); err != nil {
		return fmt.Errorf("agentwrit: %w", err)
	}
	h.validator, h.app, h.metrics, h.logger = v, app, col, logger
	if app != nil {
		h.audience = app.Audience
	}
	h.noBody = DefaultRefuseBodyOn
	if h.RefuseBodyOn != nil {
		h.noBody = *h.RefuseBodyOn
	}
	h.usageOff = h.Usage != nil && !*h.Usage
	h.allowed = col.gateway.decisions.WithLabelValues("allow", "ok")
	h.public = col.gateway.decisions.WithLabelValues("allow", "public")
	return nil
}

// Cleanup releases the remote validator's connections and cache, and this
// handler's use of the metrics.
func (h *Handler) Cleanup() error {
	if h.usage != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = h.usage.Close(ctx) // a reload or stop loses nothing already counted
		cancel()
	}
	if h.remote != nil {
		h.remote.Close()
	}
	h.metrics.release()
	return nil
}

// Validate checks the enumerated options.
func (h *Handler) Validate() error {
	switch h.Unmapped {
	case "", UnmappedDeny, UnmappedAuthenticated:
	default:
		return fmt.Errorf("agentwrit: unmapped must be %q or %q, not %q", UnmappedDeny, UnmappedAuthenticated, h.Unmapped)
	}
	switch h.Mode {
	case "", ModeEnforce, ModeReport:
	default:
		return fmt.Errorf("agentwrit: mode must be %q or %q, not %q", ModeEnforce, ModeReport, h.Mode)
	}
	for _, m := range h.noBodyMethods() {
		if m == "" || m != strings.ToUpper(m) {
			return fmt.Errorf("agentwrit: refuse_body_on: %q is not an upper-case method", m)
		}
	}
	return nil
}

// noBodyMethods is RefuseBodyOn as configured (nil when unset).
func (h *Handler) noBodyMethods() []string {
	if h.RefuseBodyOn == nil {
		return nil
	}
	return *h.RefuseBodyOn
}

// recorder is where this handler counts usage, or nil: the embedded
// broker's (shared by every config of the process), or a remote handler's
// own, flushed to the remote broker.
func (h *Handler) recorder() *broker.UsageRecorder {
	switch {
	case h.usageOff:
		return nil
	case h.usage != nil:
		return h.usage
	case h.Broker == nil && h.app != nil:
		if b := h.app.run.broker.Load(); b != nil {
			return b.Usage()
		}
	}
	return nil
}

// refusesBody reports whether a request with method may carry no body.
func (h *Handler) refusesBody(method string) bool { return slices.Contains(h.noBody, method) }
