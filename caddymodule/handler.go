package caddymodule

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/remote"
	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("agentwrit", parseHandler)
	httpcaddyfile.RegisterDirectiveOrder("agentwrit", httpcaddyfile.Before, "basic_auth")
}

// Identity headers the backend receives on an allowed request. Copies sent
// by the client are deleted from every request, allowed or not.
const (
	HeaderAgentID = "X-AgentWrit-Agent-ID"
	HeaderTaskID  = "X-AgentWrit-Task-ID"
	HeaderOrchID  = "X-AgentWrit-Orch-ID"
	HeaderScope   = "X-AgentWrit-Scope"
	HeaderJTI     = "X-AgentWrit-JTI"
)

// Canonical forms, so that direct map writes (no per-request
// canonicalization) and the client-side deletes agree on the key.
var (
	keyAgentID = http.CanonicalHeaderKey(HeaderAgentID)
	keyTaskID  = http.CanonicalHeaderKey(HeaderTaskID)
	keyOrchID  = http.CanonicalHeaderKey(HeaderOrchID)
	keyScope   = http.CanonicalHeaderKey(HeaderScope)
	keyJTI     = http.CanonicalHeaderKey(HeaderJTI)

	identityHeaders = []string{keyAgentID, keyTaskID, keyOrchID, keyScope, keyJTI}
)

// Values of Handler.Unmapped and Handler.Mode.
const (
	UnmappedDeny          = "deny"
	UnmappedAuthenticated = "authenticated"
	ModeEnforce           = "enforce"
	ModeReport            = "report"
)

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
	// Broker, when set, validates tokens through an external broker's
	// POST /v1/token/validate (remote mode); nil uses the embedded broker
	// of the agentwrit app.
	Broker *RemoteBroker `json:"broker,omitempty"`

	routes    *scopemap.Map
	validator validator
	remote    *remote.Validator // remote mode only, for Cleanup
	broker    *broker.Broker    // embedded broker, for the audit chain
	audience  string
	metrics   *gatewayMetrics
	allowed   prometheus.Counter // hot-path counters, resolved once
	public    prometheus.Counter
	logger    *zap.Logger
}

var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.agentwrit", New: func() caddy.Module { return new(Handler) }}
}

// Provision compiles the rules and connects to the embedded broker, or, in
// remote mode, sets up the client of the remote one (without contacting
// it: it may sit behind this same Caddy, not yet listening). In remote mode
// the agentwrit app is optional: if configured, denials go to its audit
// chain and its audience is required; otherwise neither applies.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	var err error
	if h.routes, err = scopemap.Compile(h.Rules); err != nil {
		return fmt.Errorf("agentwrit: %w", err)
	}
	if h.metrics, err = newGatewayMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("agentwrit: metrics: %w", err)
	}
	h.allowed = h.metrics.decisions.WithLabelValues("allow", "ok")
	h.public = h.metrics.decisions.WithLabelValues("allow", "public")
	app, err := ctx.AppIfConfigured("agentwrit")
	switch {
	case errors.Is(err, caddy.ErrNotConfigured) && h.Broker != nil:
	case errors.Is(err, caddy.ErrNotConfigured):
		return errors.New("agentwrit: no broker: add the agentwrit global option to run the embedded broker, or use broker <url> for a remote one")
	case err != nil:
		return err
	default:
		a := app.(*App)
		h.broker, h.audience = a.broker, a.Audience
	}
	if h.Broker == nil {
		h.validator = embedded{h.broker}
		return nil
	}
	if h.remote, err = h.Broker.newValidator(ctx.GetMetricsRegistry(), ctx.Slogger()); err != nil {
		return fmt.Errorf("agentwrit: %w", err)
	}
	h.validator = h.remote
	return nil
}

// Cleanup releases the remote validator's connections and cache.
func (h *Handler) Cleanup() error {
	if h.remote != nil {
		h.remote.Close()
	}
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
	return nil
}

// validator turns a bearer token into verified claims: embedded or
// *remote.Validator.
type validator interface {
	Validate(ctx context.Context, token string) (*broker.Claims, error)
}

// embedded validates in-process: a map lookup for a token seen before, and
// always a live revocation check.
type embedded struct{ b *broker.Broker }

func (e embedded) Validate(ctx context.Context, tok string) (*broker.Claims, error) {
	return e.b.Verify(ctx, tok)
}

// denial is why a request is refused.
type denial struct {
	status    int
	errType   string
	detail    string // for the client: generic, never token material
	reason    string // for logs and metrics
	challenge string // WWW-Authenticate
	event     string // audit event type, "" for none
	claims    *broker.Claims
	rule      *scopemap.Rule // the matched rule, for the log
	cause     error
}

func bearerToken(r *http.Request) (string, bool) {
	auth := r.Header.Get("Authorization")
	if len(auth) < 7 || !strings.EqualFold(auth[:7], "Bearer ") {
		return "", false
	}
	tok := strings.TrimSpace(auth[7:])
	return tok, tok != ""
}

const realm = `Bearer realm="agentwrit"`

// ServeHTTP enforces: canonical path → rule → token → validate → scope → act.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	for _, k := range identityHeaders {
		delete(r.Header, k)
	}
	raw := r.URL.EscapedPath()
	if err := scopemap.CheckCanonical(raw); err != nil {
		return h.deny(w, r, next, &denial{status: http.StatusBadRequest, errType: broker.ErrTypeInvalidRequest,
			detail: "request path is not canonical", reason: "non_canonical_path", cause: err})
	}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	m, found, lookupErr := h.routes.Lookup(r.Method, raw, repl.GetString)
	if found && m.Public {
		h.public.Inc()
		return next.ServeHTTP(w, r)
	}
	if !found && lookupErr == nil && h.Unmapped != UnmappedAuthenticated {
		return h.deny(w, r, next, &denial{status: http.StatusForbidden, errType: "route_not_mapped",
			detail: "no rule maps this route", reason: "route_not_mapped"})
	}
	tok, ok := bearerToken(r)
	if !ok {
		return h.deny(w, r, next, &denial{status: http.StatusUnauthorized, errType: broker.ErrTypeUnauthorized,
			detail: "missing bearer token", reason: "missing_token", challenge: realm, event: broker.EventTokenAuthFailed})
	}
	c, err := h.validator.Validate(r.Context(), tok)
	if err == nil && h.audience != "" && !slices.Contains(c.Aud, h.audience) {
		c, err = nil, broker.ErrAudienceMismatch
	}
	if err != nil {
		d := &denial{status: http.StatusUnauthorized, errType: broker.ErrTypeUnauthorized,
			detail: "token verification failed", reason: "invalid_token",
			challenge: realm + `, error="invalid_token"`, event: broker.EventTokenAuthFailed, cause: err}
		switch {
		case errors.Is(err, remote.ErrUnavailable):
			d = &denial{status: http.StatusServiceUnavailable, errType: "broker_unavailable",
				detail: "token validation is temporarily unavailable", reason: "broker_unavailable", cause: err}
		case errors.Is(err, broker.ErrRevoked):
			d.reason, d.event = "revoked", broker.EventTokenRevokedAccess
		}
		return h.deny(w, r, next, d)
	}
	if lookupErr != nil {
		return h.deny(w, r, next, &denial{status: http.StatusForbidden, errType: broker.ErrTypeInsufficientScope,
			detail: "a path value cannot form a valid scope", reason: "bad_scope_value",
			challenge: realm + `, error="insufficient_scope"`, event: broker.EventScopeViolation, claims: c, rule: m.Rule, cause: lookupErr})
	}
	for _, s := range m.Required {
		if !scopemap.Covers(c.Scope, s) {
			req := strings.Join(m.Required, " ")
			return h.deny(w, r, next, &denial{status: http.StatusForbidden, errType: broker.ErrTypeInsufficientScope,
				detail: "token lacks required scope: " + req, reason: "insufficient_scope",
				challenge: realm + `, error="insufficient_scope", scope="` + quoteEscape(req) + `"`,
				event:     broker.EventScopeViolation, claims: c, rule: m.Rule})
		}
	}
	h.allow(r, repl, c, m.Required)
	h.allowed.Inc()
	return next.ServeHTTP(w, r)
}

// allow hands the agent's identity to the backend and to Caddy's logs.
// One replacer provider serves every placeholder lazily, and the five
// header values share one backing array: the allowed path is hot.
func (h *Handler) allow(r *http.Request, repl *caddy.Replacer, c *broker.Claims, required []string) {
	scope := joinScopes(c.Scope)
	vals := [...]string{c.Sub, c.TaskID, c.OrchID, scope, c.Jti}
	hv := vals[:]
	hd := r.Header
	hd[keyAgentID], hd[keyTaskID], hd[keyOrchID], hd[keyScope], hd[keyJTI] = hv[0:1:1], hv[1:2:2], hv[2:3:3], hv[3:4:4], hv[4:5:5]
	if h.ForwardToken != nil && !*h.ForwardToken {
		delete(hd, "Authorization")
	}
	repl.Map(func(key string) (any, bool) {
		switch key {
		case "http.auth.user.id", "agentwrit.agent_id":
			return c.Sub, true
		case "agentwrit.task_id":
			return c.TaskID, true
		case "agentwrit.orch_id":
			return c.OrchID, true
		case "agentwrit.jti":
			return c.Jti, true
		case "agentwrit.scope":
			return scope, true
		case "agentwrit.required_scope":
			return joinScopes(required), true
		case "agentwrit.delegation_depth":
			return strconv.Itoa(len(c.DelegationChain)), true
		}
		return nil, false
	})
}

// joinScopes is strings.Join(s, " ") without an allocation for one scope.
func joinScopes(s []string) string {
	if len(s) == 1 {
		return s[0]
	}
	return strings.Join(s, " ")
}

func (h *Handler) count(result, reason string) {
	h.metrics.decisions.WithLabelValues(result, reason).Inc()
}

// quoteEscape makes s safe inside a quoted-string: path values may carry
// '"' or '\' into a required scope.
func quoteEscape(s string) string {
	if !strings.ContainsAny(s, `"\`) {
		return s
	}
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s)
}

// tokenHash is a short, non-reversible handle on a token for logs.
func tokenHash(r *http.Request) string {
	tok, ok := bearerToken(r)
	if !ok {
		return ""
	}
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:6])
}

// deny logs, counts and audits a refusal, then answers it — or, in report
// mode, lets the request through anyway.
func (h *Handler) deny(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, d *denial) error {
	report := h.Mode == ModeReport
	result := "deny"
	if report {
		result = "report"
	}
	h.count(result, d.reason)
	agent := ""
	if d.claims != nil {
		agent = d.claims.Sub
	}
	resource := r.Method + " " + r.URL.Path
	// An agent overstepping its scope is worth an operator's attention;
	// anonymous junk is not, unless debugging.
	level := zapcore.DebugLevel
	if d.claims != nil || d.reason == "revoked" {
		level = zapcore.InfoLevel
	}
	if ce := h.logger.Check(level, "agentwrit denied request"); ce != nil {
		fields := []zap.Field{zap.String("reason", d.reason), zap.String("resource", resource),
			zap.Int("status", d.status), zap.Bool("report_only", report)}
		if d.rule != nil {
			fields = append(fields, zap.Stringer("rule", d.rule))
		}
		if agent != "" {
			fields = append(fields, zap.String("agent_id", agent))
		}
		if th := tokenHash(r); th != "" {
			fields = append(fields, zap.String("token_sha256_prefix", th))
		}
		if d.cause != nil {
			fields = append(fields, zap.String("cause", d.cause.Error()))
		}
		ce.Write(fields...)
	}
	if extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
		extra.Set(zap.String("agentwrit_decision", result+":"+d.reason))
	}
	if d.event != "" && h.broker != nil {
		detail := d.reason
		if d.cause != nil {
			detail += ": " + d.cause.Error()
		}
		h.broker.RecordDenial(r.Context(), broker.Denial{EventType: d.event, Claims: d.claims, Resource: resource, Detail: detail})
	}
	if report {
		return next.ServeHTTP(w, r)
	}
	if d.challenge != "" {
		w.Header().Set("WWW-Authenticate", d.challenge)
	}
	if d.status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "5")
	}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	broker.NewProblem(d.status, d.errType, d.detail, r.URL.Path, repl.ReplaceAll("{http.request.uuid}", "")).Write(w)
	return nil
}

// UnmarshalCaddyfile sets up the handler:
//
//	agentwrit [<matcher>] {
//		broker   embedded | <url> [{
//			cache_ttl          <duration>
//			cache_size         <entries>
//			negative_cache_ttl <duration>
//			timeout            <duration>
//			stale_if_error     <duration>
//			tls_ca             <pem file>
//			tls_client_cert    <cert pem file> <key pem file>
//		}]
//		require  <METHODS> <pattern> <scope...>
//		public   <METHODS> <pattern>
//		unmapped deny|authenticated
//		forward_token on|off
//		mode     enforce|report
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch opt := d.Val(); opt {
		case "require", "public":
			rule, err := scopemap.ParseRule(append([]string{opt}, d.RemainingArgs()...))
			if err != nil {
				return d.Errf("%v", err)
			}
			h.Rules = append(h.Rules, rule)
		case "broker":
			rb, err := parseBrokerOption(d)
			if err != nil {
				return err
			}
			h.Broker = rb
		case "unmapped", "mode":
			if !d.NextArg() {
				return d.ArgErr()
			}
			v := d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
			if opt == "unmapped" {
				h.Unmapped = v
			} else {
				h.Mode = v
			}
		case "forward_token":
			if !d.NextArg() {
				return d.ArgErr()
			}
			var on bool
			switch d.Val() {
			case "on":
				on = true
			case "off":
			default:
				return d.Errf("forward_token must be on or off, not %q", d.Val())
			}
			h.ForwardToken = &on
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("unrecognized agentwrit subdirective %q", opt)
		}
	}
	return nil
}

func parseHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	return m, m.UnmarshalCaddyfile(h.Dispenser)
}
