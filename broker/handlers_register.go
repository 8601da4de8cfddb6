package broker

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"

	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// validSegment is go-spiffe's rule for one path segment of a SPIFFE ID.
func validSegment(s string) bool {
	if s == "" || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// handleRegister follows upstream's order so that nothing is
// consumed by a request that fails before the nonce check, and adds two
// checks: orch_id/task_id are validated up front (D3), and small-order
// public keys are refused.
func (b *Broker) handleRegister(w http.ResponseWriter, r *http.Request) {
	var req RegisterRequest
	if !decodeJSON(r, &req) {
		badJSON(w, r)
		return
	}
	ctx := r.Context()
	fail := func(status int, errType, detail string) {
		b.obs.Registration(false)
		WriteProblem(w, r, status, errType, detail)
	}
	if req.LaunchToken == "" || req.Nonce == "" || req.PublicKey == "" || req.Signature == "" || req.OrchID == "" || req.TaskID == "" {
		fail(http.StatusBadRequest, ErrTypeInvalidRequest, "missing required field")
		return
	}
	if len(req.RequestedScope) == 0 {
		fail(http.StatusBadRequest, ErrTypeInvalidRequest, "missing required field: requested_scope")
		return
	}
	if scopesRefused(w, r, req.RequestedScope) {
		b.obs.Registration(false)
		return
	}
	if !validSegment(req.OrchID) || !validSegment(req.TaskID) {
		fail(http.StatusBadRequest, ErrTypeInvalidRequest, "orch_id and task_id must use only [A-Za-z0-9._-] and must not be . or ..")
		return
	}
	now := b.now()
	ltHash := LaunchTokenHash(req.LaunchToken)
	lt, err := b.store.db.LaunchToken(ctx, ltHash)
	switch {
	case errors.Is(err, ErrNotFound):
		fail(http.StatusUnauthorized, ErrTypeUnauthorized, "launch token: launch token not found")
		return
	case err != nil:
		b.obs.Registration(false)
		b.dbFailed(w, r, "launch_token_lookup", err, "registration failed")
		return
	case now.Unix() > lt.ExpiresAt.Unix(): // whole seconds, as upstream
		fail(http.StatusUnauthorized, ErrTypeUnauthorized, "launch token: launch token expired")
		return
	case !lt.ConsumedAt.IsZero():
		fail(http.StatusUnauthorized, ErrTypeUnauthorized, "launch token: launch token already consumed")
		return
	}
	if !scopemap.Subset(req.RequestedScope, lt.AllowedScope) {
		b.audit(ctx, Event{
			EventType: EventRegistrationViolation, TaskID: req.TaskID, OrchID: req.OrchID,
			Detail:  fmt.Sprintf("scope violation: requested %v exceeds allowed %v", req.RequestedScope, lt.AllowedScope),
			Outcome: OutcomeDenied,
		})
		fail(http.StatusForbidden, ErrTypeScopeViolation, "requested scope exceeds allowed scope")
		return
	}
	switch err := b.store.nonces.ConsumeNonce(ctx, req.Nonce, now); {
	case errors.Is(err, ErrNotFound):
		fail(http.StatusUnauthorized, ErrTypeUnauthorized, "nonce: nonce not found or expired")
		return
	case errors.Is(err, ErrConsumed):
		fail(http.StatusUnauthorized, ErrTypeUnauthorized, "nonce: nonce already consumed")
		return
	case err != nil:
		b.obs.Registration(false)
		b.dbFailed(w, r, "nonce_consume", err, "registration failed")
		return
	}
	pub, err := base64.StdEncoding.Strict().DecodeString(req.PublicKey)
	switch {
	case err != nil:
		fail(http.StatusUnauthorized, ErrTypeUnauthorized, "invalid Ed25519 public key: base64 decode failed")
		return
	case len(pub) != ed25519.PublicKeySize:
		fail(http.StatusUnauthorized, ErrTypeUnauthorized, "invalid Ed25519 public key: wrong key size")
		return
	case weakPublicKey(pub):
		fail(http.StatusUnauthorized, ErrTypeUnauthorized, "invalid Ed25519 public key: small-order or non-canonical point")
		return
	}
	sig, err := base64.StdEncoding.Strict().DecodeString(req.Signature)
	if err != nil {
		fail(http.StatusUnauthorized, ErrTypeUnauthorized, "nonce signature verification failed: base64 decode failed")
		return
	}
	msg, err := hex.DecodeString(req.Nonce)
	if err != nil {
		msg = []byte(req.Nonce)
	}
	if !ed25519.Verify(pub, msg, sig) {
		fail(http.StatusUnauthorized, ErrTypeUnauthorized, "nonce signature verification failed")
		return
	}
	instance, err := randomHex(8)
	if err != nil {
		fail(http.StatusInternalServerError, ErrTypeInternal, "registration failed")
		return
	}
	agentID := "spiffe://" + b.cfg.TrustDomain + "/agent/" + req.OrchID + "/" + req.TaskID + "/" + instance
	maxTTL := lt.MaxTTL
	if maxTTL <= 0 {
		maxTTL = defaultLaunchMaxTTL
	}
	ttl := b.ttl(maxTTL)
	tok, c, err := b.issue(Claims{
		Sub: agentID, Aud: b.audience(), Scope: req.RequestedScope, TaskID: req.TaskID, OrchID: req.OrchID,
	}, ttl)
	if err != nil {
		fail(http.StatusInternalServerError, ErrTypeInternal, "registration failed")
		return
	}
	reg := &Registration{
		Agent: Agent{
			ID: agentID, PublicKey: pub, OrchID: req.OrchID, TaskID: req.TaskID, Scope: req.RequestedScope,
			AppID: lt.AppID, LaunchToken: ltHash, AgentName: lt.AgentName, LaunchScope: lt.AllowedScope, RegisteredAt: now.UTC(),
		},
		Token: recordOf(&c, ""),
	}
	if lt.SingleUse {
		reg.ConsumeLaunchToken = ltHash
	}
	switch err := b.store.db.Register(ctx, reg); {
	case errors.Is(err, ErrConsumed):
		fail(http.StatusUnauthorized, ErrTypeUnauthorized, "consume launch token: launch token already consumed")
		return
	case err != nil:
		b.obs.Registration(false)
		b.dbFailed(w, r, "save_agent", err, "registration failed")
		return
	}
	b.store.countsChanged()
	appSuffix := ""
	if lt.AppID != "" {
		appSuffix = " app_id=" + lt.AppID
	}
	b.audit(ctx, Event{
		EventType: EventAgentRegistered, AgentID: agentID, TaskID: req.TaskID, OrchID: req.OrchID,
		Detail: fmt.Sprintf("Agent registered with scope %v", req.RequestedScope) + appSuffix, Outcome: OutcomeSuccess,
	})
	b.audit(ctx, Event{
		EventType: EventTokenIssued, AgentID: agentID, TaskID: req.TaskID, OrchID: req.OrchID,
		Detail: fmt.Sprintf("Token issued, jti=%s, ttl=%d", c.Jti, lt.MaxTTL) + appSuffix, Outcome: OutcomeSuccess,
	})
	b.obs.Registration(true)
	writeJSON(w, http.StatusOK, RegisterResponse{agentID, tok, ttl})
}
