package caddymodule

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// denial is why a request is refused.
type denial struct {
	status    int
	errType   string
	detail    string // for the client: generic, never token material
	reason    string // for logs, metrics and the audit chain's folding
	challenge string // WWW-Authenticate
	event     string // audit event type, "" for none
	claims    *broker.Claims
	rule      *scopemap.Rule // the matched rule, for the log
	required  []string
	cause     error
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
	h.metrics.gateway.decisions.WithLabelValues(result, d.reason).Inc()
	if u := h.recorder(); u != nil {
		u.Decision(result, d.reason)
		if d.claims != nil && len(d.required) > 0 {
			// "Asked for write:orders:7, holds read:orders:*": beside its usage.
			used := broker.UsageDenied
			if report {
				used = broker.UsageWouldDeny
			}
			u.Record(d.claims, d.rule, d.required, used)
		}
	}
	resource := r.Method + " " + r.URL.Path
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if d.claims != nil {
		// The token verified: the access log names the agent, allowed or not.
		identify(repl, d.claims, d.required)
	}
	logDecision(r, result, d.reason, d.rule, d.required)
	// An agent overstepping its scope is worth an operator's attention;
	// anonymous junk is not, unless debugging.
	level := zapcore.DebugLevel
	if d.claims != nil {
		level = zapcore.InfoLevel
	}
	if ce := h.logger.Check(level, "agentwrit denied request"); ce != nil {
		fields := []zap.Field{zap.String("reason", d.reason), zap.String("resource", resource),
			zap.Int("status", d.status), zap.Bool("report_only", report)}
		if d.rule != nil {
			fields = append(fields, zap.Stringer("rule", d.rule))
		}
		if d.claims != nil {
			fields = append(fields, zap.String("agent_id", d.claims.Sub))
		}
		if th := tokenHash(r); th != "" {
			fields = append(fields, zap.String("token_sha256_prefix", th))
		}
		if d.cause != nil {
			fields = append(fields, zap.String("cause", d.cause.Error()))
		}
		ce.Write(fields...)
	}
	if d.event != "" && h.app != nil {
		if b := h.app.run.broker.Load(); b != nil {
			detail := d.reason
			if d.cause != nil {
				detail += ": " + d.cause.Error()
			}
			rule := ""
			if d.rule != nil {
				rule = d.rule.String()
			}
			b.RecordDenial(r.Context(), broker.Denial{EventType: d.event, Claims: d.claims, Resource: resource,
				Reason: d.reason, Rule: rule, Detail: detail})
		}
	}
	if report {
		return next.ServeHTTP(w, r)
	}
	hd := w.Header()
	if d.challenge != "" {
		hd.Set("WWW-Authenticate", d.challenge)
	}
	if d.status == http.StatusServiceUnavailable {
		hd.Set("Retry-After", "5")
	}
	id := broker.NewRequestID()
	hd.Set(broker.RequestIDHeader, id)
	broker.NewProblem(d.status, d.errType, d.detail, r.URL.Path, id).Write(w)
	return nil
}
