package broker

import "context"

// Denial describes a request the gateway refused, for the audit chain.
type Denial struct {
	// EventType is EventTokenAuthFailed, EventTokenRevokedAccess or EventScopeViolation.
	EventType string
	// Claims of the presented token, when it verified; may be nil.
	Claims *Claims
	// Resource is "METHOD path" of the refused request.
	Resource string
	// Detail says why, without any token material.
	Detail string
}

// RecordDenial appends a gateway denial to the audit chain, so decisions
// taken in front of backends are as auditable as the broker's own.
func (b *Broker) RecordDenial(ctx context.Context, d Denial) {
	e := Event{EventType: d.EventType, Resource: d.Resource, Detail: d.Detail, Outcome: OutcomeDenied}
	if c := d.Claims; c != nil {
		e.AgentID, e.TaskID, e.OrchID, e.DelegDepth, e.DelegChainHash = c.Sub, c.TaskID, c.OrchID, len(c.DelegationChain), c.ChainHash
	}
	b.audit(ctx, e)
}
