package caddymodule

import (
	"errors"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/remote"
	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

const realm = `Bearer realm="agentwrit"`

// bearerToken returns the token of an "Authorization: Bearer" header (the
// scheme matched case-insensitively, RFC 6750).
func bearerToken(r *http.Request) (string, bool) {
	auth := r.Header.Get("Authorization")
	if len(auth) < 7 || !strings.EqualFold(auth[:7], "Bearer ") {
		return "", false
	}
	tok := strings.TrimSpace(auth[7:])
	return tok, tok != ""
}

// ServeHTTP enforces, in this order: the request's shape (no client copy
// of an identity header, no body on a bodiless method), the canonical path,
// the rule, the token, its validity, its scopes; then the next handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	hd := r.Header
	for _, k := range identityHeaders {
		delete(hd, k)
	}
	if _, ok := hd["Connection"]; ok {
		keepIdentityHeaders(hd)
	}
	if r.ContentLength != 0 && h.refusesBody(r.Method) {
		return h.deny(w, r, next, &denial{status: http.StatusBadRequest, errType: broker.ErrTypeInvalidRequest,
			detail: "a " + r.Method + " request must not carry a body", reason: "body_not_allowed"})
	}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	d := h.routes.Decide(r.Method, r.URL.EscapedPath(), repl.GetString)
	switch d.Outcome {
	case scopemap.NotCanonical:
		return h.deny(w, r, next, &denial{status: http.StatusBadRequest, errType: broker.ErrTypeInvalidRequest,
			detail: "request path is not canonical", reason: "non_canonical_path", cause: d.Err})
	case scopemap.Public:
		h.public.Inc()
		if u := h.recorder(); u != nil {
			u.Decision(broker.DecisionAllow, broker.ReasonPublic)
		}
		return next.ServeHTTP(w, r)
	case scopemap.Unmapped:
		if h.Unmapped != UnmappedAuthenticated {
			return h.deny(w, r, next, &denial{status: http.StatusForbidden, errType: "route_not_mapped",
				detail: "no rule maps this route", reason: "route_not_mapped"})
		}
	}
	// The route needs a token: it must be one, in the one place for it.
	if len(hd["Authorization"]) > 1 {
		return h.deny(w, r, next, &denial{status: http.StatusBadRequest, errType: broker.ErrTypeInvalidRequest,
			detail: "more than one Authorization header", reason: "duplicate_authorization", rule: d.Rule})
	}
	if tokenInQuery(r.URL) {
		return h.deny(w, r, next, &denial{status: http.StatusBadRequest, errType: broker.ErrTypeInvalidRequest,
			detail: "send the token in the Authorization header, not in the access_token query parameter", reason: "token_in_query", rule: d.Rule})
	}
	tok, ok := bearerToken(r)
	if !ok {
		return h.deny(w, r, next, &denial{status: http.StatusUnauthorized, errType: broker.ErrTypeUnauthorized,
			detail: "missing bearer token", reason: "missing_token", challenge: realm, event: broker.EventTokenAuthFailed, rule: d.Rule})
	}
	c, err := h.validator.Validate(r.Context(), tok)
	if err == nil && !c.HasAudience(h.audience) {
		err = broker.ErrAudienceMismatch
	}
	if err != nil {
		return h.deny(w, r, next, h.invalid(c, err, d.Rule))
	}
	if d.Outcome == scopemap.BadValue {
		return h.deny(w, r, next, &denial{status: http.StatusForbidden, errType: broker.ErrTypeInsufficientScope,
			detail: "a path value cannot form a valid scope", reason: "bad_scope_value",
			challenge: realm + `, error="insufficient_scope"`, event: broker.EventScopeViolation, claims: c, rule: d.Rule, cause: d.Err})
	}
	for _, s := range d.Required {
		if !scopemap.Covers(c.Scope, s) {
			req := strings.Join(d.Required, " ")
			return h.deny(w, r, next, &denial{status: http.StatusForbidden, errType: broker.ErrTypeInsufficientScope,
				detail: "token lacks required scope: " + req, reason: "insufficient_scope",
				// The grammar keeps '"' and '\' out of scopes: no escaping needed.
				challenge: realm + `, error="insufficient_scope", scope="` + req + `"`,
				event:     broker.EventScopeViolation, claims: c, rule: d.Rule, required: d.Required})
		}
	}
	h.allow(r, repl, c, d.Rule, d.Required)
	h.allowed.Inc()
	return next.ServeHTTP(w, r)
}

// invalid is the denial of a token that did not validate: 401, or 503
// when it could not be checked at all (fail closed, never open).
func (h *Handler) invalid(c *broker.Claims, err error, rule *scopemap.Rule) *denial {
	if errors.Is(err, broker.ErrUnavailable) || errors.Is(err, remote.ErrUnavailable) {
		return &denial{status: http.StatusServiceUnavailable, errType: "broker_unavailable",
			detail: "token validation is temporarily unavailable", reason: "broker_unavailable", rule: rule, cause: err}
	}
	d := &denial{status: http.StatusUnauthorized, errType: broker.ErrTypeUnauthorized,
		detail: "token verification failed", reason: "invalid_token",
		challenge: realm + `, error="invalid_token"`, event: broker.EventTokenAuthFailed, rule: rule, cause: err}
	if errors.Is(err, broker.ErrRevoked) {
		// A revoked token's claims still name the agent: evidence.
		d.reason, d.event, d.claims = "revoked", broker.EventTokenRevokedAccess, c
	}
	return d
}

// tokenInQuery reports whether the URL carries an RFC 6750 access_token
// query parameter, which the access log would record.
func tokenInQuery(u *url.URL) bool {
	if !strings.Contains(u.RawQuery, "access_token") {
		return false // the common case costs a substring search
	}
	q, err := url.ParseQuery(u.RawQuery)
	return err != nil || q.Has("access_token")
}

// keepIdentityHeaders removes the identity headers from Connection, so a
// client cannot have the proxy drop them as hop-by-hop headers.
func keepIdentityHeaders(hd http.Header) {
	var kept []string
	for _, v := range hd["Connection"] {
		for f := range strings.SplitSeq(v, ",") {
			f = strings.TrimSpace(f)
			if f != "" && !isIdentityHeader(textproto.CanonicalMIMEHeaderKey(f)) {
				kept = append(kept, f)
			}
		}
	}
	if len(kept) == 0 {
		delete(hd, "Connection")
		return
	}
	hd["Connection"] = []string{strings.Join(kept, ", ")}
}

func isIdentityHeader(canonical string) bool {
	for _, k := range identityHeaders {
		if k == canonical {
			return true
		}
	}
	return false
}
