package broker

import (
	"context"
	"fmt"
	"time"
)

// issue signs a token for c with a fresh jti, iat = nbf = now, exp = now +
// ttl seconds and the configured issuer.
func (b *Broker) issue(c Claims, ttl int64) (string, Claims, error) {
	jti, err := randomHex(16)
	if err != nil {
		return "", c, fmt.Errorf("issue token: %w", err)
	}
	now := b.now().Unix()
	c.Iss, c.Jti, c.Iat, c.Nbf, c.Exp = b.cfg.Issuer, jti, now, now, now+ttl
	tok, err := b.signer().sign(&c)
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

// recordOf is what the database keeps of the token c; parent is the jti
// of the delegator's token for a delegated one.
func recordOf(c *Claims, parent string) TokenRecord {
	r := TokenRecord{
		JTI: c.Jti, Subject: c.Sub, Parent: parent, TaskID: c.TaskID, OrchID: c.OrchID, Scope: c.Scope,
		Depth: c.DelegationDepth(), IssuedAt: time.Unix(c.Iat, 0).UTC(), ExpiresAt: time.Unix(c.Exp, 0).UTC(),
	}
	if r.Depth > 0 {
		r.Root = c.DelegationChain[0].Agent
	}
	return r
}

// issueRecorded issues a token and records it, for the tokens whose issue
// has no other write to share a transaction with (admin, app, delegated).
func (b *Broker) issueRecorded(ctx context.Context, c Claims, ttl int64, parent string) (string, Claims, error) {
	tok, c, err := b.issue(c, ttl)
	if err != nil {
		return "", c, err
	}
	rec := recordOf(&c, parent)
	if err := b.store.db.SaveToken(ctx, &rec); err != nil {
		return "", c, fmt.Errorf("record token: %w", err)
	}
	b.store.countsChanged()
	return tok, c, nil
}
