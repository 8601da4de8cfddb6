package caddymodule

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

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

// allow hands the agent's identity to the backend and to Caddy's logs.
// One replacer provider serves every placeholder lazily, and the five
// header values share one backing array: the allowed path is hot.
func (h *Handler) allow(r *http.Request, repl *caddy.Replacer, c *broker.Claims, rule *scopemap.Rule, required []string) {
	scope := joinScopes(c.Scope)
	vals := [...]string{c.Sub, c.TaskID, c.OrchID, scope, c.Jti}
	hv := vals[:]
	hd := r.Header
	hd[keyAgentID], hd[keyTaskID], hd[keyOrchID], hd[keyScope], hd[keyJTI] = hv[0:1:1], hv[1:2:2], hv[2:3:3], hv[3:4:4], hv[4:5:5]
	if h.ForwardToken != nil && !*h.ForwardToken {
		delete(hd, "Authorization")
	}
	identify(repl, c, required)
	logDecision(r, "allow", "ok", rule, required)
	if u := h.recorder(); u != nil {
		result := broker.UsageAllowed
		if h.Mode == ModeReport {
			result = broker.UsageWouldAllow
		}
		u.Record(c, rule, required, result)
		u.Decision(broker.DecisionAllow, broker.ReasonOK)
	}
}

// identify provides the agent's placeholders, {http.auth.user.id} (which
// Caddy's access log records as user_id) among them, allowed or denied.
func identify(repl *caddy.Replacer, c *broker.Claims, required []string) {
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
			return joinScopes(c.Scope), true
		case "agentwrit.required_scope":
			return joinScopes(required), true
		case "agentwrit.delegation_depth":
			return strconv.Itoa(c.DelegationDepth()), true
		}
		return nil, false
	})
}

// logDecision adds the decision to the request's access log line.
func logDecision(r *http.Request, result, reason string, rule *scopemap.Rule, required []string) {
	extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields)
	if !ok {
		return
	}
	extra.Add(zap.String("agentwrit_decision", result+":"+reason))
	if rule != nil {
		extra.Add(zap.Stringer("agentwrit_rule", rule))
	}
	if len(required) > 0 {
		extra.Add(zap.Strings("agentwrit_required", required))
	}
}

// joinScopes is strings.Join(s, " ") without an allocation for one scope.
func joinScopes(s []string) string {
	if len(s) == 1 {
		return s[0]
	}
	return strings.Join(s, " ")
}
