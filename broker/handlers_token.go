package broker

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

func (b *Broker) handleChallenge(w http.ResponseWriter, r *http.Request) {
	n, err := b.store.nonces.issue(b.now())
	if err != nil {
		WriteProblem(w, r, http.StatusInternalServerError, ErrTypeInternal, "failed to generate nonce")
		return
	}
	writeJSON(w, http.StatusOK, Challenge{n, int(nonceTTL / time.Second)})
}

func (b *Broker) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, Health{"ok", Version, int64(b.now().Sub(b.started) / time.Second), b.store.db.PingContext(r.Context()) == nil, b.store.audit.count()})
}

func (b *Broker) handleMetrics(w http.ResponseWriter, r *http.Request) {
	if b.cfg.MetricsHandler != nil {
		b.cfg.MetricsHandler.ServeHTTP(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
}

func (b *Broker) handleJWKS(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, b.JWKS())
}

// invalidTokenBody is the whole answer for any token that does not verify.
var invalidTokenBody = []byte(`{"valid":false,"error":"token is invalid or expired"}` + "\n")

// validateToken extracts the token from a /v1/token/validate body. The
// common exact shape {"token":"<base64url and dots>"} is read without the
// JSON decoder (a token has no characters JSON would escape); anything else
// goes through encoding/json with the leniency upstream clients observe.
func validateToken(body []byte) (string, bool) {
	const prefix = `{"token":"`
	if rest, ok := bytes.CutPrefix(body, []byte(prefix)); ok {
		if end := bytes.IndexByte(rest, '"'); end >= 0 && bytes.IndexByte(rest[:end], '\\') < 0 &&
			len(rest) > end+1 && rest[end+1] == '}' {
			return string(rest[:end]), true
		}
	}
	var req ValidateRequest
	if json.NewDecoder(bytes.NewReader(body)).Decode(&req) != nil {
		return "", false
	}
	return req.Token, true
}

func (b *Broker) handleValidate(w http.ResponseWriter, r *http.Request) {
	body := requestBody(r)
	tok, ok := validateToken(body)
	if !ok {
		badJSON(w, r)
		return
	}
	if tok == "" {
		WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidRequest, "token field is required")
		return
	}
	w.Header()["Content-Type"] = jsonContentType
	_, resp, err := b.ValidResponse(r.Context(), tok)
	if err != nil {
		resp = invalidTokenBody
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(resp)
}

func (b *Broker) handleRenew(w http.ResponseWriter, r *http.Request) {
	old := claimsFrom(r)
	fail := func(err error) {
		b.audit(r.Context(), Event{
			EventType: EventTokenRenewalFailed, AgentID: old.Sub, TaskID: old.TaskID, OrchID: old.OrchID,
			Detail: "token renewal failed for agent=" + old.Sub + ": " + err.Error(), Outcome: OutcomeDenied,
		})
		WriteProblem(w, r, http.StatusUnauthorized, ErrTypeUnauthorized, "token renewal failed")
	}
	// The predecessor dies first: a renewal never leaves two live tokens.
	if err := b.store.Revoke(r.Context(), LevelToken, old.Jti); err != nil {
		b.obs.DBError("revoke")
		fail(err)
		return
	}
	ttl := b.ttl(old.Exp - old.Iat)
	tok, c, err := b.issue(Claims{
		Sub: old.Sub, Aud: old.Aud, Scope: old.Scope, TaskID: old.TaskID, OrchID: old.OrchID, Sid: old.Sid,
		DelegationChain: old.DelegationChain, ChainHash: old.ChainHash,
	}, ttl)
	if err != nil {
		fail(err)
		return
	}
	b.audit(r.Context(), Event{
		EventType: EventTokenRenewed, AgentID: old.Sub, TaskID: old.TaskID, OrchID: old.OrchID,
		Detail: "token renewed for agent=" + old.Sub + " new_jti=" + c.Jti, Outcome: OutcomeSuccess,
	})
	writeJSON(w, http.StatusOK, TokenResponse{tok, ttl})
}

func (b *Broker) handleRelease(w http.ResponseWriter, r *http.Request) {
	c := claimsFrom(r)
	if err := b.store.Revoke(r.Context(), LevelToken, c.Jti); err != nil {
		b.obs.DBError("revoke")
		b.log.Error("release: revoke failed", "jti", c.Jti, "error", err)
	}
	b.obs.TokenRevoked("release")
	b.audit(r.Context(), Event{
		EventType: EventTokenReleased, AgentID: c.Sub, TaskID: c.TaskID, OrchID: c.OrchID,
		Detail: "token released | jti=" + c.Jti, Outcome: OutcomeSuccess,
	})
	w.WriteHeader(http.StatusNoContent)
}

func (b *Broker) handleRevoke(w http.ResponseWriter, r *http.Request) {
	var req RevokeRequest
	if !decodeJSON(r, &req) {
		badJSON(w, r)
		return
	}
	if req.Level == "" || req.Target == "" {
		WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidRequest, "level and target are required")
		return
	}
	if !validLevel(req.Level) {
		WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidRequest, "invalid revocation level: "+req.Level)
		return
	}
	if err := b.store.Revoke(r.Context(), req.Level, req.Target); err != nil {
		b.obs.DBError("revoke")
		WriteProblem(w, r, http.StatusInternalServerError, ErrTypeInternal, "revocation failed")
		return
	}
	b.obs.TokenRevoked(req.Level)
	b.audit(r.Context(), Event{
		EventType: EventTokenRevoked, AgentID: req.Target,
		Detail: "revoked at level=" + req.Level + " target=" + req.Target, Outcome: OutcomeSuccess,
	})
	writeJSON(w, http.StatusOK, RevokeResponse{true, req.Level, req.Target, 1})
}

// Audit paging, as upstream (§10.10).
const (
	defaultAuditLimit = 100
	maxAuditLimit     = 1000
)

func (b *Broker) handleAuditEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := AuditFilter{
		AgentID: q.Get("agent_id"), TaskID: q.Get("task_id"), EventType: q.Get("event_type"), Outcome: q.Get("outcome"),
	}
	// Unparseable bounds are ignored, as upstream does.
	if t, err := time.Parse(time.RFC3339, q.Get("since")); err == nil {
		f.Since = &t
	}
	if t, err := time.Parse(time.RFC3339, q.Get("until")); err == nil {
		f.Until = &t
	}
	limit, _ := strconv.Atoi(q.Get("limit"))
	if limit <= 0 {
		limit = defaultAuditLimit
	}
	offset, _ := strconv.Atoi(q.Get("offset"))
	f.Limit, f.Offset = min(limit, maxAuditLimit), max(offset, 0)
	events, total, err := b.store.QueryAudit(r.Context(), f)
	if err != nil {
		b.obs.DBError("audit_query")
		WriteProblem(w, r, http.StatusInternalServerError, ErrTypeInternal, "failed to query audit events")
		return
	}
	writeJSON(w, http.StatusOK, AuditPage{events, total, offset, limit})
}
