package broker

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

const (
	maxDelegationDepth = 5
	defaultDelegateTTL = 60
)

// delegable reports whether a scope may be handed on: admin and app powers
// never reach agents through delegation (D4).
func delegable(scope string) bool {
	sc, ok := scopemap.ParseScope(scope)
	return ok && sc.Action != "admin" && sc.Action != "app"
}

// signRecord signs "agent|scope,scope|delegated_at" with the broker key.
func signRecord(key ed25519.PrivateKey, rec *DelegRecord) {
	msg := rec.Agent + "|" + strings.Join(rec.Scope, ",") + "|" + rec.DelegatedAt
	rec.Signature = hex.EncodeToString(ed25519.Sign(key, []byte(msg)))
}

// ChainHash is the lowercase-hex SHA-256 of the JSON encoding of a chain.
func ChainHash(chain []DelegRecord) (string, error) {
	b, err := json.Marshal(chain)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

func (b *Broker) handleDelegate(w http.ResponseWriter, r *http.Request) {
	c := claimsFrom(r)
	var req DelegateRequest
	if !decodeJSON(r, &req) {
		badJSON(w, r)
		return
	}
	if req.DelegateTo == "" || len(req.Scope) == 0 { // D1
		WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidRequest, "delegate_to and scope are required")
		return
	}
	if scopesRefused(w, r, req.Scope) {
		return
	}
	if !strings.HasPrefix(c.Sub, "spiffe://") { // D4
		WriteProblem(w, r, http.StatusForbidden, ErrTypeScopeViolation, "only agent tokens may delegate")
		return
	}
	depth := c.DelegationDepth()
	if depth >= maxDelegationDepth {
		WriteProblem(w, r, http.StatusForbidden, ErrTypeScopeViolation, "delegation depth limit exceeded")
		return
	}
	ctx := r.Context()
	if !scopemap.Subset(req.Scope, c.Scope) {
		b.audit(ctx, Event{
			EventType: EventDelegationAttenuation, AgentID: c.Sub, TaskID: c.TaskID, OrchID: c.OrchID,
			Detail: fmt.Sprintf("delegation_attenuation_violation | delegator=%s | target=%s | requested=%v | allowed=%v",
				c.Sub, req.DelegateTo, req.Scope, c.Scope),
			Outcome: OutcomeDenied, DelegDepth: depth,
		})
		WriteProblem(w, r, http.StatusForbidden, ErrTypeScopeViolation, "delegated scope exceeds delegator scope")
		return
	}
	for _, s := range req.Scope {
		if !delegable(s) { // D4
			WriteProblem(w, r, http.StatusForbidden, ErrTypeScopeViolation, "scope is not delegable: "+s)
			return
		}
	}
	exists, err := b.store.db.AgentExists(ctx, req.DelegateTo)
	if err != nil {
		b.dbFailed(w, r, "agent_lookup", err, "delegation failed")
		return
	}
	if !exists {
		WriteProblem(w, r, http.StatusNotFound, ErrTypeNotFound, "delegate agent not found")
		return
	}
	rec := DelegRecord{Agent: c.Sub, Scope: c.Scope, DelegatedAt: formatTime(b.now())}
	signRecord(b.signer().key, &rec)
	chain := append(append(make([]DelegRecord, 0, depth+1), c.DelegationChain...), rec)
	hash, err := ChainHash(chain)
	if err != nil {
		WriteProblem(w, r, http.StatusInternalServerError, ErrTypeInternal, "delegation failed")
		return
	}
	ttl := req.TTL
	if ttl <= 0 {
		ttl = defaultDelegateTTL
	}
	ttl = b.ttl(ttl)
	// D6: a delegated token never outlives its delegator.
	ttl = min(ttl, max(c.Exp-b.now().Unix(), 0))
	tok, _, err := b.issueRecorded(ctx, Claims{
		Sub: req.DelegateTo, Aud: c.Aud, Scope: req.Scope, TaskID: c.TaskID, OrchID: c.OrchID,
		DelegationChain: chain, ChainHash: hash,
	}, ttl, c.Jti)
	if err != nil {
		b.dbFailed(w, r, "token_record", err, "delegation failed")
		return
	}
	b.audit(ctx, Event{
		EventType: EventDelegationCreated, AgentID: req.DelegateTo, TaskID: c.TaskID, OrchID: c.OrchID,
		Detail:  fmt.Sprintf("delegation from %s to %s scope=%v depth=%d", c.Sub, req.DelegateTo, req.Scope, len(chain)),
		Outcome: OutcomeSuccess, DelegDepth: len(chain), DelegChainHash: hash,
	})
	writeJSON(w, http.StatusOK, DelegateResponse{tok, ttl, chain})
}
