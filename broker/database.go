package broker

import (
	"context"
	"crypto/ed25519"
	"time"
)

// Database is the broker's durable state: everything a restart must not
// lose. Package broker/storage opens one from a file path (SQLite, one
// node) or a postgres:// URL (PostgreSQL, any number of replicas); the
// contract every implementation meets is the suite in
// broker/storage/storagetest.
//
// Methods return errors wrapping ErrNotFound, ErrConflict or ErrConsumed
// where callers branch, and ErrUnavailable when the database cannot be
// reached, so the broker answers 503 and the client may retry.
type Database interface {
	KeyDB
	AppDB
	LaunchTokenDB
	AgentDB
	RevocationDB
	AuditDB
	UsageDB
	// Info says what the database is, for health, status and logs.
	Info() DatabaseInfo
	// Ping checks that the database answers.
	Ping(ctx context.Context) error
	// Watch calls notify for every change to revocations or signing keys
	// committed through any handle on the database, this one included,
	// until ctx ends or the connection is lost (then it returns the
	// error; the caller catches up and watches again). Notices may be
	// coalesced or repeated; catching up from the last sequence seen is
	// what makes a follower complete.
	Watch(ctx context.Context, notify func(Change)) error
	// Close releases the database.
	Close() error
}

// DatabaseInfo describes a database without any secret in it.
type DatabaseInfo struct {
	// Kind is "sqlite" or "postgres".
	Kind string `json:"kind"`
	// Location is the file path, or the URL without its password.
	Location string `json:"location"`
	// Shared reports whether other processes may write to the same
	// database (a fleet), so that this one must follow their changes.
	Shared bool `json:"shared"`
}

// ChangeKind says what a Change is about.
type ChangeKind uint8

const (
	// ChangeRevocation: a revocation was committed; Seq is its sequence
	// number, or 0 when unknown (catch up from the last one seen).
	ChangeRevocation ChangeKind = iota + 1
	// ChangeKeys: the signing key set changed.
	ChangeKeys
)

// Change is a notice from Watch.
type Change struct {
	Kind ChangeKind
	Seq  int64
}

// SigningKey is one key of the broker's key set. The key with a zero
// RetireAt is the active one, which signs; the others still verify the
// tokens they signed until RetireAt, after which they are retired.
type SigningKey struct {
	Private   ed25519.PrivateKey
	CreatedAt time.Time
	RetireAt  time.Time
}

// KeyDB holds the signing keys.
type KeyDB interface {
	// SigningKeys returns every stored key, oldest first.
	SigningKeys(ctx context.Context) ([]SigningKey, error)
	// InitSigningKey stores k as the active key if the database holds no
	// key yet, atomically: of many replicas starting at once, one wins.
	InitSigningKey(ctx context.Context, k SigningKey) error
	// RotateSigningKey makes next the active key and sets the previous
	// active key's RetireAt to retireAt, atomically.
	RotateSigningKey(ctx context.Context, next SigningKey, retireAt time.Time) error
}

// AppDB holds the registered applications.
type AppDB interface {
	// InsertApp stores a new app; ErrConflict if its name or client ID is taken.
	InsertApp(ctx context.Context, a *App) error
	// Apps returns every app, newest first.
	Apps(ctx context.Context) ([]*App, error)
	// App returns the app with the given ID, or ErrNotFound.
	App(ctx context.Context, id string) (*App, error)
	// AppByClientID returns the app with the given client ID, or ErrNotFound.
	AppByClientID(ctx context.Context, clientID string) (*App, error)
	// UpdateApp changes the ceiling and/or token TTL (nil: unchanged) in
	// one statement; ErrNotFound if there is no such app.
	UpdateApp(ctx context.Context, id string, scopes []string, tokenTTL *int64, now time.Time) error
	// DeregisterApp deactivates the app, drops its unused launch tokens
	// and revokes its own tokens (level agent, target "app:<id>"), all or
	// nothing; ErrNotFound if there is no such app.
	DeregisterApp(ctx context.Context, id string, now time.Time) (Revocation, error)
}

// LaunchTokenDB holds launch tokens, keyed by the SHA-256 of the token so
// a copy of the database hands out no usable launch token.
type LaunchTokenDB interface {
	// CreateLaunchToken stores lt under hash.
	CreateLaunchToken(ctx context.Context, hash string, lt *LaunchToken) error
	// LaunchToken returns the launch token stored under hash, consumed or
	// not, or ErrNotFound.
	LaunchToken(ctx context.Context, hash string) (*LaunchToken, error)
	// PruneLaunchTokens deletes launch tokens that expired before t.
	PruneLaunchTokens(ctx context.Context, before time.Time) error
}

// AgentDB holds registered agents and the tokens issued to them.
type AgentDB interface {
	// Register stores a registration in one transaction: it consumes the
	// single-use launch token under r.ConsumeLaunchToken (if set; exactly
	// one of any number of concurrent consumers wins, the others get
	// ErrConsumed), and saves the agent and its first token. Nothing is
	// stored if any step fails.
	Register(ctx context.Context, r *Registration) error
	// AgentExists reports whether an agent with this SPIFFE ID registered.
	AgentExists(ctx context.Context, id string) (bool, error)
	// Agents lists registered agents, newest first, with their live
	// tokens (unexpired at f.Now and not revoked at any level), and how
	// many matched before paging.
	Agents(ctx context.Context, f AgentFilter) ([]AgentView, int, error)
	// Stats counts what an operator watches, at now.
	Stats(ctx context.Context, now time.Time) (Stats, error)
	// SaveToken records an issued token.
	SaveToken(ctx context.Context, t *TokenRecord) error
	// Token returns the record of the token with this jti, or ErrNotFound.
	Token(ctx context.Context, jti string) (*TokenRecord, error)
	// PruneTokens deletes records of tokens that expired before t.
	PruneTokens(ctx context.Context, before time.Time) error
}

// NonceDB holds challenge nonces. A Database that implements it shares
// nonces between replicas; otherwise the broker keeps them in memory.
type NonceDB interface {
	// PutNonce stores a fresh nonce that expires at expires.
	PutNonce(ctx context.Context, nonce string, expires time.Time) error
	// ConsumeNonce marks the nonce used: ErrNotFound if unknown or
	// expired at now, ErrConsumed if already used (in that order of
	// precedence: a used nonce reports "consumed" even after it expired).
	// Exactly one of any number of concurrent consumers succeeds.
	ConsumeNonce(ctx context.Context, nonce string, now time.Time) error
	// PruneNonces deletes nonces that expired before t.
	PruneNonces(ctx context.Context, before time.Time) error
}

// RevocationDB holds revocations, each with a sequence number that
// orders them the same way for every reader. Revocations are never
// deleted: a reader that resumes after n finds the one it read at n still
// there, unless the database went back in time (restored from an older
// backup), which is how the Store notices that.
type RevocationDB interface {
	// Revoke records a revocation and returns it. Revoking twice returns
	// the first record. Sequence numbers are committed in order: a
	// reader that has seen n has seen every revocation before n.
	Revoke(ctx context.Context, level, target string, now time.Time) (Revocation, error)
	// RevocationsSince returns up to limit revocations with Seq > seq, in
	// sequence order.
	RevocationsSince(ctx context.Context, seq int64, limit int) ([]Revocation, error)
	// RevocationHead returns the highest sequence number stored, 0 when
	// there is none. It is below what a reader has seen only when the
	// database went back in time: the revocation feed checks a client's
	// resume position against it.
	RevocationHead(ctx context.Context) (int64, error)
}

// AuditDB holds the hash-chained audit trail.
type AuditDB interface {
	// AppendAudit chains the events after the stored head, in order, and
	// stores them in one transaction, the head serialized in the
	// database so concurrent appenders (replicas) form one linear chain.
	// ChainEvents fills in each event's ID, timestamp and hashes. On
	// error nothing is chained.
	AppendAudit(ctx context.Context, events []Event, now time.Time) error
	// AuditHead returns the newest event's sequence number and hash
	// (0 and the genesis hash for an empty chain).
	AuditHead(ctx context.Context) (AuditHead, error)
	// QueryAudit returns the events matching f and how many matched
	// before paging.
	QueryAudit(ctx context.Context, f AuditFilter) ([]Event, int, error)
	// PruneAudit deletes the events at or before chain position seq and
	// returns how many it deleted. The Store appends the anchor that keeps
	// the rest verifiable first (see EventAuditPruned).
	PruneAudit(ctx context.Context, seq int64) (int64, error)
}

// UsageDB holds scope usage and decision counts (see usage.go).
type UsageDB interface {
	// AddUsage adds the counts of records and decisions to what is
	// stored under their keys (hour or minute, and the rest), in one
	// transaction.
	AddUsage(ctx context.Context, records []UsageRecord, decisions []DecisionCount) error
	// QueryUsage sums the usage records matching f over its time range,
	// per agent, rule, required and granted scope and result, with the
	// app and launch token each agent registered with.
	QueryUsage(ctx context.Context, f UsageFilter) ([]UsageRow, error)
	// Decisions sums decision counts per minute since t.
	Decisions(ctx context.Context, since time.Time) ([]DecisionCount, error)
	// PruneUsage deletes usage of hours, and decisions of minutes, before t.
	PruneUsage(ctx context.Context, usageBefore, decisionsBefore time.Time) error
}

// Revocation is one stored revocation.
type Revocation struct {
	Seq       int64     `json:"seq"`
	Level     string    `json:"level"`
	Target    string    `json:"target"`
	RevokedAt time.Time `json:"revoked_at"`
}

// Registration is what Register stores.
type Registration struct {
	// ConsumeLaunchToken is the hash of a single-use launch token to
	// consume, or "".
	ConsumeLaunchToken string
	Agent              Agent
	Token              TokenRecord
}

// Agent is a registered agent identity.
type Agent struct {
	ID          string
	PublicKey   []byte
	OrchID      string
	TaskID      string
	Scope       []string
	AppID       string
	LaunchToken string // hash of the launch token it registered with
	// AgentName and LaunchScope are the launch token's name and allowed
	// scopes, kept with the agent: the template its grant came from.
	AgentName    string
	LaunchScope  []string
	RegisteredAt time.Time
}

// TokenRecord is what the broker remembers of a token it issued: enough
// to list live tokens and to bound a renewal by the tokens it descends
// from. The token itself is never stored.
type TokenRecord struct {
	JTI     string
	Subject string
	// Parent is the jti of the delegator's token, for delegated tokens.
	Parent    string
	TaskID    string
	OrchID    string
	Scope     []string
	Depth     int    // delegation depth
	Root      string // the chain's root delegator, for delegated tokens
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// AgentFilter selects agents; zero fields do not filter.
type AgentFilter struct {
	// Query matches agents whose ID contains it.
	Query                 string
	TaskID, OrchID, AppID string
	// Live keeps only agents holding a live token.
	Live bool
	// Now is the time liveness is judged at.
	Now           time.Time
	Offset, Limit int // Limit ≤ 0: no limit
}

// AgentView is an agent and its live tokens, newest first.
type AgentView struct {
	Agent
	Tokens []TokenRecord
}

// Stats are the counts behind the status page and the gauges.
type Stats struct {
	Agents      int64 `json:"agents"`      // ever registered
	LiveAgents  int64 `json:"live_agents"` // holding a live token
	LiveTokens  int64 `json:"live_tokens"` // unexpired and not revoked
	Revocations int64 `json:"revocations"` // stored revocations
}

// AuditHead is the newest link of the chain.
type AuditHead struct {
	Seq  int64
	Hash string
	// Timestamp is the newest event's time; new events are never stamped
	// earlier, so chain order and time order agree across replicas.
	Timestamp time.Time
}
