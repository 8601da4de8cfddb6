package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

func (b *Broker) handleChallenge(w http.ResponseWriter, r *http.Request) {
	n, err := randomHex(32)
	if err != nil {
		WriteProblem(w, r, http.StatusInternalServerError, ErrTypeInternal, "failed to generate nonce")
		return
	}
	if err := b.store.nonces.PutNonce(r.Context(), n, b.now().Add(nonceTTL)); err != nil {
		b.dbFailed(w, r, "nonce_put", err, "failed to generate nonce")
		return
	}
	writeJSON(w, http.StatusOK, Challenge{n, int(nonceTTL / time.Second)})
}

// handleHealth answers upstream's shape. db_connected is a real ping here
// (upstream's is always true), and audit_events_count is the chain's
// length as the database holds it.
func (b *Broker) handleHealth(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	up := b.store.db.Ping(ctx) == nil
	var count int64
	if up {
		if head, err := b.store.db.AuditHead(ctx); err == nil {
			count = head.Seq
		}
	}
	writeJSON(w, http.StatusOK, Health{"ok", Version, int64(b.now().Sub(b.started) / time.Second), up, count})
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
	ctx := r.Context()
	fail := func(err error) {
		b.audit(ctx, Event{
			EventType: EventTokenRenewalFailed, AgentID: old.Sub, TaskID: old.TaskID, OrchID: old.OrchID,
			Detail: "token renewal failed for agent=" + old.Sub + ": " + err.Error(), Outcome: OutcomeDenied,
		})
		WriteProblem(w, r, http.StatusUnauthorized, ErrTypeUnauthorized, "token renewal failed")
	}
	now := b.now()
	ttl := b.ttl(old.Exp - old.Iat)
	parent := ""
	if old.DelegationDepth() > 0 {
		// A renewed delegated token never outlives the tokens it descends
		// from, and dies with them.
		var until time.Time
		var err error
		if parent, until, err = b.ancestry(ctx, old.Jti, now); err != nil {
			if errors.Is(err, ErrUnavailable) {
				b.dbFailed(w, r, "token_lookup", err, "token renewal failed")
				return
			}
			fail(err)
			return
		}
		if ttl = min(ttl, int64(until.Sub(now)/time.Second)); ttl <= 0 {
			fail(errAncestorGone)
			return
		}
	}
	// The predecessor dies first: a renewal never leaves two live tokens.
	if _, err := b.store.revoke(ctx, LevelToken, old.Jti, now); err != nil {
		b.dbFailed(w, r, "revoke", err, "token renewal failed")
		return
	}
	tok, c, err := b.issueRecorded(ctx, Claims{
		Sub: old.Sub, Aud: old.Aud, Scope: old.Scope, TaskID: old.TaskID, OrchID: old.OrchID, Sid: old.Sid,
		DelegationChain: old.DelegationChain, ChainHash: old.ChainHash,
	}, ttl, parent)
	if err != nil {
		fail(err)
		return
	}
	b.audit(ctx, Event{
		EventType: EventTokenRenewed, AgentID: old.Sub, TaskID: old.TaskID, OrchID: old.OrchID,
		Detail: "token renewed for agent=" + old.Sub + " new_jti=" + c.Jti, Outcome: OutcomeSuccess,
	})
	writeJSON(w, http.StatusOK, TokenResponse{tok, ttl})
}

// errAncestorGone is why a delegated token cannot be renewed.
var errAncestorGone = errors.New("a token it was delegated from is no longer valid")

// ancestry walks up from the delegated token jti to the root of its chain
// and returns its parent's jti and the earliest expiry among its
// ancestors. It fails when any ancestor has expired or been revoked
// (released, renewed away), or is unknown to the database.
func (b *Broker) ancestry(ctx context.Context, jti string, now time.Time) (string, time.Time, error) {
	rec, err := b.store.db.Token(ctx, jti)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("%w: %w", errAncestorGone, err)
	}
	parent := rec.Parent
	var until time.Time
	for id, hops := parent, 0; id != ""; hops++ {
		if hops > maxDelegationDepth {
			return "", time.Time{}, fmt.Errorf("%w: chain longer than %d", errAncestorGone, maxDelegationDepth)
		}
		a, err := b.store.db.Token(ctx, id)
		if err != nil {
			return "", time.Time{}, fmt.Errorf("%w: %s: %w", errAncestorGone, id, err)
		}
		if !now.Before(a.ExpiresAt) || b.store.revocations.RecordRevoked(a) {
			return "", time.Time{}, fmt.Errorf("%w: %s", errAncestorGone, id)
		}
		if until.IsZero() || a.ExpiresAt.Before(until) {
			until = a.ExpiresAt
		}
		id = a.Parent
	}
	if parent == "" {
		return "", time.Time{}, fmt.Errorf("%w: no delegator recorded", errAncestorGone)
	}
	return parent, until, nil
}

func (b *Broker) handleRelease(w http.ResponseWriter, r *http.Request) {
	c := claimsFrom(r)
	if _, err := b.store.revoke(r.Context(), LevelToken, c.Jti, b.now()); err != nil {
		b.dbFailed(w, r, "revoke", err, "release failed")
		return
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
	if !ValidLevel(req.Level) {
		WriteProblem(w, r, http.StatusBadRequest, ErrTypeInvalidRequest, "invalid revocation level: "+req.Level)
		return
	}
	if _, err := b.store.revoke(r.Context(), req.Level, req.Target, b.now()); err != nil {
		b.dbFailed(w, r, "revoke", err, "revocation failed")
		return
	}
	b.obs.TokenRevoked(req.Level)
	b.audit(r.Context(), Event{
		EventType: EventTokenRevoked, AgentID: req.Target,
		Detail: "revoked at level=" + req.Level + " target=" + req.Target, Outcome: OutcomeSuccess,
	})
	writeJSON(w, http.StatusOK, RevokeResponse{true, req.Level, req.Target, 1})
}

// seqOf is the chain position of an event ID such as "evt-000042", or 0.
func seqOf(id string) int64 {
	n, err := strconv.ParseInt(strings.TrimPrefix(id, "evt-"), 10, 64)
	if err != nil || n < 0 || !strings.HasPrefix(id, "evt-") {
		return 0
	}
	return n
}

// Audit paging, as upstream's.
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
	// This product's extensions (docs/api.md): newest first, and keyset
	// paging by event ID that stays fast a million events deep.
	f.NewestFirst = q.Get("order") == "newest"
	f.AfterSeq, f.BeforeSeq = seqOf(q.Get("after_id")), seqOf(q.Get("before_id"))
	events, total, err := b.store.db.QueryAudit(r.Context(), f)
	if err != nil {
		b.dbFailed(w, r, "audit_query", err, "failed to query audit events")
		return
	}
	writeJSON(w, http.StatusOK, AuditPage{events, total, offset, limit})
}
