package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Audit event types emitted by the broker (upstream's) and the gateway.
const (
	EventAdminAuth             = "admin_auth"
	EventAdminAuthFailed       = "admin_auth_failed"
	EventLaunchTokenIssued     = "launch_token_issued"
	EventLaunchTokenDenied     = "launch_token_denied"
	EventScopeCeilingExceeded  = "scope_ceiling_exceeded"
	EventAgentRegistered       = "agent_registered"
	EventTokenIssued           = "token_issued"
	EventRegistrationViolation = "registration_policy_violation"
	EventTokenRenewed          = "token_renewed"
	EventTokenRenewalFailed    = "token_renewal_failed"
	EventTokenReleased         = "token_released"
	EventTokenRevoked          = "token_revoked"
	EventDelegationCreated     = "delegation_created"
	EventDelegationAttenuation = "delegation_attenuation_violation"
	EventTokenAuthFailed       = "token_auth_failed"
	EventScopeViolation        = "scope_violation"
	EventTokenRevokedAccess    = "token_revoked_access"
	EventAppRegistered         = "app_registered"
	EventAppAuthenticated      = "app_authenticated"
	EventAppAuthFailed         = "app_auth_failed"
	EventAppUpdated            = "app_updated"
	EventAppDeregistered       = "app_deregistered"
	// Events of this product, not upstream's.
	EventKeyRotated = "key_rotated"
	// EventAuditPruned anchors a pruned chain: its detail names the last
	// pruned event and that event's hash, which the first kept event's
	// prev_hash must equal (see ChainVerifier).
	EventAuditPruned = "audit_pruned"
	OutcomeSuccess   = "success"
	OutcomeDenied    = "denied"
	// GenesisHash is the prev_hash of the first event of a chain.
	GenesisHash = "0000000000000000000000000000000000000000000000000000000000000000"
)

// Event is one entry of the hash-chained audit trail, in upstream's JSON shape.
type Event struct {
	// Seq is the event's position in the chain, from 1; its ID is
	// "evt-%06d" of it.
	Seq              int64  `json:"-"`
	ID               string `json:"id"`
	Timestamp        string `json:"timestamp"`
	EventType        string `json:"event_type"`
	AgentID          string `json:"agent_id,omitempty"`
	TaskID           string `json:"task_id,omitempty"`
	OrchID           string `json:"orch_id,omitempty"`
	Detail           string `json:"detail"`
	Resource         string `json:"resource,omitempty"`
	Outcome          string `json:"outcome,omitempty"`
	DelegDepth       int    `json:"deleg_depth,omitempty"`
	DelegChainHash   string `json:"deleg_chain_hash,omitempty"`
	BytesTransferred int    `json:"bytes_transferred,omitempty"`
	Hash             string `json:"hash"`
	PrevHash         string `json:"prev_hash"`
}

// ComputeHash returns the chain hash of e over its 13 fields joined by "|"
// (upstream's, byte for byte).
func (e *Event) ComputeHash() string {
	s := strings.Join([]string{
		e.PrevHash, e.ID, e.Timestamp, e.EventType, e.AgentID, e.TaskID, e.OrchID,
		e.Detail, e.Resource, e.Outcome, strconv.Itoa(e.DelegDepth), e.DelegChainHash,
		strconv.Itoa(e.BytesTransferred),
	}, "|")
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// ChainError says where a hash chain first breaks.
type ChainError struct {
	Index  int    `json:"index"` // position in the verified sequence, from 0
	ID     string `json:"id"`    // the event's id
	Reason string `json:"reason"`
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("audit chain broken at event %d (%s): %s", e.Index, e.ID, e.Reason)
}

// ChainVerifier checks events one at a time, in chain order, so a chain of
// any length can be verified as it streams in; Done ends the walk.
//
// A chain whose oldest events were pruned (audit retention) starts at an
// event whose prev_hash is not the genesis hash. It verifies only if a
// later audit_pruned event, itself part of the chain, names exactly the
// event before the first kept one and its hash: the anchor.
type ChainVerifier struct {
	prev  string
	n     int
	first *Event // the first event, while its anchor is still owed
}

// NewChainVerifier starts at the genesis hash.
func NewChainVerifier() *ChainVerifier { return &ChainVerifier{prev: GenesisHash} }

// PrunedDetail is the detail of the audit_pruned event anchoring a chain
// pruned through the event id with hash.
func PrunedDetail(id, hash string) string { return "pruned_through=" + id + " pruned_hash=" + hash }

// Next checks e against the chain so far; it returns a *ChainError at the
// first event whose prev_hash or hash does not match.
func (v *ChainVerifier) Next(e *Event) error {
	defer func() { v.n++ }()
	if v.n == 0 && e.PrevHash != GenesisHash && seqOf(e.ID) > 1 {
		first := *e
		v.first, v.prev = &first, e.PrevHash // pruned: owed an anchor
	}
	if v.first != nil && e.EventType == EventAuditPruned &&
		e.Detail == PrunedDetail(eventID(seqOf(v.first.ID)-1), v.first.PrevHash) {
		v.first = nil
	}
	if e.PrevHash != v.prev {
		return &ChainError{Index: v.n, ID: e.ID, Reason: fmt.Sprintf("prev_hash %q, want %q", e.PrevHash, v.prev)}
	}
	if h := e.ComputeHash(); e.Hash != h {
		return &ChainError{Index: v.n, ID: e.ID, Reason: fmt.Sprintf("hash %q, recomputed %q", e.Hash, h)}
	}
	v.prev = e.Hash
	return nil
}

// Done reports a pruned chain that no audit_pruned event anchors.
func (v *ChainVerifier) Done() error {
	if v.first != nil {
		return &ChainError{Index: 0, ID: v.first.ID, Reason: "the chain starts after pruned events, but no audit_pruned event anchors it"}
	}
	return nil
}

// VerifyChain checks a whole chain from genesis (or its anchor) and
// reports the first broken link as a *ChainError.
func VerifyChain(events []Event) error {
	v := NewChainVerifier()
	for i := range events {
		if err := v.Next(&events[i]); err != nil {
			return err
		}
	}
	return v.Done()
}

var piiKeywords = []string{"secret", "password", "token_value", "private_key"}

func hasPII(s string) bool {
	s = strings.ToLower(s)
	for _, k := range piiKeywords {
		if strings.Contains(s, k) {
			return true
		}
	}
	return false
}

// sanitizeDetail is upstream's redaction, quirks included, because
// the hash covers the sanitized text.
func sanitizeDetail(d string) string {
	if !hasPII(d) {
		return d
	}
	// Upstream tries "=" and then ": ", each split once at its first
	// occurrence; the first split whose left side holds a keyword wins.
	for _, sep := range []string{"=", ": "} {
		if left, _, ok := strings.Cut(d, sep); ok && hasPII(left) {
			return left + sep + "***REDACTED***"
		}
	}
	return d
}

// formatTime is Go's RFC3339Nano in UTC: trailing zeros of the fraction dropped.
func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// ChainEvents links events after head, in order: IDs from head.Seq+1, one
// timestamp for the batch (now, but never earlier than head's, so chain
// order and time order agree even between replicas whose clocks differ),
// sanitized details, prev_hash and hash. It returns the new head. Database
// implementations call it while they hold the stored head.
func ChainEvents(events []Event, head AuditHead, now time.Time) AuditHead {
	if now.Before(head.Timestamp) {
		now = head.Timestamp
	}
	ts := formatTime(now)
	prev := head.Hash
	if prev == "" {
		prev = GenesisHash
	}
	seq := head.Seq
	for i := range events {
		e := &events[i]
		seq++
		e.Seq = seq
		e.ID = fmt.Sprintf("evt-%06d", seq)
		e.Timestamp = ts
		e.Detail = sanitizeDetail(e.Detail)
		e.PrevHash = prev
		e.Hash = e.ComputeHash()
		prev = e.Hash
	}
	return AuditHead{Seq: seq, Hash: prev, Timestamp: now}
}

// AuditFilter selects audit events; zero fields and nil bounds do not filter.
type AuditFilter struct {
	AgentID, TaskID, EventType, Outcome string
	Since, Until                        *time.Time // inclusive
	// AfterSeq and BeforeSeq bound the chain position (exclusive; 0 means
	// no bound): keyset paging that stays fast a million events deep.
	AfterSeq, BeforeSeq int64
	// NewestFirst reverses the order (chain order by default).
	NewestFirst bool
	// NoTotal skips counting the matches (the total returned is 0): a walk
	// over the whole chain must not count the rest of it at every page.
	NoTotal       bool
	Offset, Limit int // Limit ≤ 0: no limit
}

// VerifyAudit recomputes the whole chain stored in db, a page at a time,
// and returns the head it verified, or the first broken link as a
// *ChainError.
func VerifyAudit(ctx context.Context, db AuditDB) (AuditHead, error) {
	v := NewChainVerifier()
	head := AuditHead{Hash: GenesisHash}
	const page = 1000
	for {
		evs, _, err := db.QueryAudit(ctx, AuditFilter{AfterSeq: head.Seq, Limit: page, NoTotal: true})
		if err != nil {
			return head, err
		}
		for i := range evs {
			if err := v.Next(&evs[i]); err != nil {
				return head, err
			}
			head.Seq, head.Hash = evs[i].Seq, evs[i].Hash
		}
		if len(evs) < page {
			return head, v.Done()
		}
	}
}
