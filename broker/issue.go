package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// coversScope is AgentWrit's coverage rule, shared with the gateway.
func coversScope(granted []string, required string) bool { return scopemap.Covers(granted, required) }

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// issue signs a token for c with a fresh jti, iat = nbf = now, exp = now +
// ttl seconds and the configured issuer.
func (b *Broker) issue(c Claims, ttl int64) (string, Claims, error) {
	jti, err := randomHex(16)
	if err != nil {
		return "", c, fmt.Errorf("issue token: %w", err)
	}
	now := b.now().Unix()
	c.Iss, c.Jti, c.Iat, c.Nbf, c.Exp = b.cfg.Issuer, jti, now, now, now+ttl
	tok, err := b.signer.sign(&c)
	if err != nil {
		return "", c, err
	}
	first := "none"
	if len(c.Scope) > 0 {
		first = c.Scope[0]
	}
	b.obs.TokenIssued(first)
	return tok, c, nil
}

// audience is the aud of newly issued admin, app and agent tokens.
func (b *Broker) audience() []string {
	if b.cfg.Audience == "" {
		return nil
	}
	return []string{b.cfg.Audience}
}

// audit appends e to the chain. A failed write is logged and counted; the
// request it describes still gets its answer, as upstream does.
func (b *Broker) audit(ctx context.Context, e Event) {
	start := b.now()
	if _, err := b.store.audit.append(ctx, e); err != nil {
		b.obs.DBError("audit_write")
		b.log.Error("audit write failed", "event_type", e.EventType, "error", err)
		return
	}
	b.obs.AuditWrite(b.now().Sub(start))
	b.obs.AuditEvent(e.EventType)
}
