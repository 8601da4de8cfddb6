package broker

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Audit event types emitted by the broker (upstream §12.4) and the gateway.
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
	OutcomeSuccess             = "success"
	OutcomeDenied              = "denied"
	genesisHash                = "0000000000000000000000000000000000000000000000000000000000000000"
)

// Event is one entry of the hash-chained audit trail, in upstream's JSON shape.
type Event struct {
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
// (upstream §12.2, byte for byte).
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
	Index  int    // position in the verified sequence, from 0
	ID     string // the event's id
	Reason string
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("audit chain broken at event %d (%s): %s", e.Index, e.ID, e.Reason)
}

// ChainVerifier checks events one at a time, in chain order, so a chain of
// any length can be verified as it streams in.
type ChainVerifier struct {
	prev string
	n    int
}

// NewChainVerifier starts at the genesis hash. To verify a suffix of a
// chain, use ContinueChain with the hash of the event before it.
func NewChainVerifier() *ChainVerifier { return &ChainVerifier{prev: genesisHash} }

// ContinueChain starts after an event whose hash is prev.
func ContinueChain(prev string) *ChainVerifier { return &ChainVerifier{prev: prev} }

// Next checks e against the chain so far; it returns a *ChainError at the
// first event whose prev_hash or hash does not match.
func (v *ChainVerifier) Next(e *Event) error {
	defer func() { v.n++ }()
	if e.PrevHash != v.prev {
		return &ChainError{Index: v.n, ID: e.ID, Reason: fmt.Sprintf("prev_hash %q, want %q", e.PrevHash, v.prev)}
	}
	if h := e.ComputeHash(); e.Hash != h {
		return &ChainError{Index: v.n, ID: e.ID, Reason: fmt.Sprintf("hash %q, recomputed %q", e.Hash, h)}
	}
	v.prev = e.Hash
	return nil
}

// VerifyChain checks a whole chain from genesis and reports the first broken
// link as a *ChainError.
func VerifyChain(events []Event) error {
	v := NewChainVerifier()
	for i := range events {
		if err := v.Next(&events[i]); err != nil {
			return err
		}
	}
	return nil
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

// sanitizeDetail is upstream's redaction, quirks included (§12.3), because
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

// auditLog appends to the chain. Each event's prev_hash is its
// predecessor's hash, and an event is in the database before its append
// returns (an event that cannot be written is not chained).
//
// Appends are group-committed: while one batch is being written, later
// appends queue up, and the next writer commits the whole queue in one
// transaction, so a burst of denials costs one fsync instead of one each.
// A write that fails fails every append of its batch, and none is chained.
type auditLog struct {
	writeMu sync.Mutex // held by the one appender writing a batch

	mu       sync.Mutex // guards the fields below
	queue    []*auditAppend
	seq      int64
	lastHash string

	db  *sql.DB
	now func() time.Time
}

// auditAppend is one queued event; done and err are set by the writer of
// its batch while it holds writeMu.
type auditAppend struct {
	e    Event
	seq  int64
	done bool
	err  error
}

func loadAuditLog(ctx context.Context, db *sql.DB) (*auditLog, error) {
	l := &auditLog{db: db, lastHash: genesisHash, now: time.Now}
	var seq sql.NullInt64
	var hash sql.NullString
	err := db.QueryRowContext(ctx, `SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1`).Scan(&seq, &hash)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return nil, fmt.Errorf("load audit tail: %w", err)
	default:
		l.seq, l.lastHash = seq.Int64, hash.String
	}
	return l, nil
}

func (l *auditLog) count() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func nullInt(i int) any {
	if i == 0 {
		return nil
	}
	return i
}

// append fills in id, timestamp, hashes and the sanitized detail, writes the
// event and returns it.
func (l *auditLog) append(ctx context.Context, e Event) (Event, error) {
	a := &auditAppend{e: e}
	l.mu.Lock()
	l.queue = append(l.queue, a)
	l.mu.Unlock()

	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	if !a.done { // nobody took it into a batch yet: write the whole queue
		l.mu.Lock()
		batch := l.queue
		l.queue = nil
		seq, prev := l.seq, l.lastHash
		l.mu.Unlock()
		seq, prev, err := l.write(context.WithoutCancel(ctx), batch, seq, prev)
		if err == nil {
			l.mu.Lock()
			l.seq, l.lastHash = seq, prev
			l.mu.Unlock()
		}
		for _, b := range batch {
			b.done, b.err = true, err
		}
	}
	if a.err != nil {
		return Event{}, a.err
	}
	return a.e, nil
}

// write chains batch after the event (seq, prev) and inserts it in one
// transaction; it returns the new tail, or an error and no event chained.
func (l *auditLog) write(ctx context.Context, batch []*auditAppend, seq int64, prev string) (int64, string, error) {
	now := l.now()
	ts := formatTime(now)
	for _, a := range batch {
		e := &a.e
		seq++
		a.seq = seq
		e.ID = fmt.Sprintf("evt-%06d", seq)
		e.Timestamp = ts
		e.Detail = sanitizeDetail(e.Detail)
		e.PrevHash = prev
		e.Hash = e.ComputeHash()
		prev = e.Hash
	}
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, "", fmt.Errorf("audit: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO audit_events
		(seq, id, timestamp, ts_unix_nano, event_type, agent_id, task_id, orch_id, detail,
		 resource, outcome, deleg_depth, deleg_chain_hash, bytes_transferred, hash, prev_hash)
		VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`)
	if err != nil {
		return 0, "", fmt.Errorf("audit: %w", err)
	}
	defer stmt.Close()
	for _, a := range batch {
		e := &a.e
		if _, err := stmt.ExecContext(ctx, a.seq, e.ID, e.Timestamp, now.UnixNano(), e.EventType,
			e.AgentID, e.TaskID, e.OrchID, e.Detail, nullString(e.Resource), nullString(e.Outcome),
			nullInt(e.DelegDepth), nullString(e.DelegChainHash), nullInt(e.BytesTransferred), e.Hash, e.PrevHash); err != nil {
			return 0, "", fmt.Errorf("audit %s: %w", e.EventType, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, "", fmt.Errorf("audit commit: %w", err)
	}
	return seq, prev, nil
}

// AuditFilter selects audit events; zero fields and nil bounds do not filter.
type AuditFilter struct {
	AgentID, TaskID, EventType, Outcome string
	Since, Until                        *time.Time // inclusive
	Offset, Limit                       int
}

// Bounds of the times the store can compare (it keeps Unix nanoseconds).
var (
	minNano = time.Unix(0, math.MinInt64)
	maxNano = time.Unix(0, math.MaxInt64)
)

// unixNano is t.UnixNano clamped to the representable range, so that a
// bound like 2999-01-01 matches nothing instead of overflowing.
func unixNano(t time.Time) int64 {
	switch {
	case t.Before(minNano):
		return math.MinInt64
	case t.After(maxNano):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// QueryAudit returns the events matching f in chain order, and how many
// matched before paging.
func (s *Store) QueryAudit(ctx context.Context, f AuditFilter) ([]Event, int, error) {
	var where []string
	var args []any
	for _, c := range []struct{ col, v string }{
		{"agent_id", f.AgentID}, {"task_id", f.TaskID}, {"event_type", f.EventType}, {"outcome", f.Outcome},
	} {
		if c.v != "" {
			where = append(where, c.col+" = ?")
			args = append(args, c.v)
		}
	}
	if f.Since != nil {
		where = append(where, "ts_unix_nano >= ?")
		args = append(args, unixNano(*f.Since))
	}
	if f.Until != nil {
		where = append(where, "ts_unix_nano <= ?")
		args = append(args, unixNano(*f.Until))
	}
	cond := ""
	if len(where) > 0 {
		cond = " WHERE " + strings.Join(where, " AND ")
	}
	var total int
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM audit_events`+cond, args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("query audit: %w", err)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = -1 // SQLite: no limit
	}
	events, err := s.scanEvents(ctx, `SELECT id, timestamp, event_type, agent_id, task_id, orch_id, detail,
		coalesce(resource,''), coalesce(outcome,''), coalesce(deleg_depth,0), coalesce(deleg_chain_hash,''),
		coalesce(bytes_transferred,0), hash, prev_hash FROM audit_events`+cond+` ORDER BY seq LIMIT ? OFFSET ?`,
		append(args, limit, max(f.Offset, 0))...)
	return events, total, err
}

func (s *Store) scanEvents(ctx context.Context, q string, args ...any) ([]Event, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("query audit: %w", err)
	}
	defer rows.Close()
	events := []Event{}
	for rows.Next() {
		var e Event
		if err := rows.Scan(&e.ID, &e.Timestamp, &e.EventType, &e.AgentID, &e.TaskID, &e.OrchID, &e.Detail,
			&e.Resource, &e.Outcome, &e.DelegDepth, &e.DelegChainHash, &e.BytesTransferred, &e.Hash, &e.PrevHash); err != nil {
			return nil, fmt.Errorf("query audit: %w", err)
		}
		events = append(events, e)
	}
	return events, rows.Err()
}

// VerifyAudit recomputes the whole chain stored in the database, in pages,
// and returns the first broken link as a *ChainError, or nil.
func (s *Store) VerifyAudit(ctx context.Context) error {
	v := NewChainVerifier()
	const page = 1000
	for off := 0; ; off += page {
		evs, _, err := s.QueryAudit(ctx, AuditFilter{Offset: off, Limit: page})
		if err != nil {
			return err
		}
		for i := range evs {
			if err := v.Next(&evs[i]); err != nil {
				return err
			}
		}
		if len(evs) < page {
			return nil
		}
	}
}
