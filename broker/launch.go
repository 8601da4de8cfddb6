package broker

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Launch-token errors, worded as upstream reports them after "launch token: ".
var (
	errLaunchNotFound = errors.New("launch token not found")
	errLaunchExpired  = errors.New("launch token expired")
	errLaunchConsumed = errors.New("launch token already consumed")
)

// LaunchToken is the policy an operator or app attaches to a launch token.
type LaunchToken struct {
	AgentName    string
	AllowedScope []string
	MaxTTL       int64
	SingleUse    bool
	ExpiresAt    time.Time
	CreatedBy    string
	AppID        string
}

// launchKey is what the database stores instead of the launch token itself,
// so a copy of the database does not hand out usable launch tokens.
func launchKey(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

func (s *Store) createLaunchToken(ctx context.Context, lt LaunchToken, now time.Time) (string, error) {
	tok, err := randomHex(32)
	if err != nil {
		return "", fmt.Errorf("create launch token: %w", err)
	}
	scope, err := json.Marshal(lt.AllowedScope)
	if err != nil {
		return "", fmt.Errorf("create launch token: %w", err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO launch_tokens
		(token_hash, agent_name, allowed_scope, max_ttl, single_use, created_at, expires_at, created_by, app_id)
		VALUES (?,?,?,?,?,?,?,?,?)`,
		launchKey(tok), lt.AgentName, string(scope), lt.MaxTTL, lt.SingleUse, formatTime(now),
		lt.ExpiresAt.Unix(), lt.CreatedBy, lt.AppID)
	if err != nil {
		return "", fmt.Errorf("create launch token: %w", err)
	}
	return tok, nil
}

// lookupLaunchToken checks in upstream's order: unknown, expired, consumed.
func (s *Store) lookupLaunchToken(ctx context.Context, tok string, now time.Time) (*LaunchToken, error) {
	var lt LaunchToken
	var scope string
	var expires int64
	var consumed sql.NullString
	err := s.db.QueryRowContext(ctx, `SELECT agent_name, allowed_scope, max_ttl, single_use, expires_at,
		consumed_at, created_by, app_id FROM launch_tokens WHERE token_hash = ?`, launchKey(tok)).
		Scan(&lt.AgentName, &scope, &lt.MaxTTL, &lt.SingleUse, &expires, &consumed, &lt.CreatedBy, &lt.AppID)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, errLaunchNotFound
	case err != nil:
		return nil, fmt.Errorf("lookup launch token: %w", err)
	}
	lt.ExpiresAt = time.Unix(expires, 0)
	if now.Unix() > expires {
		return nil, errLaunchExpired
	}
	if consumed.Valid {
		return nil, errLaunchConsumed
	}
	if err := json.Unmarshal([]byte(scope), &lt.AllowedScope); err != nil {
		return nil, fmt.Errorf("lookup launch token: %w", err)
	}
	return &lt, nil
}

// consumeLaunchToken marks a single-use token used. Exactly one of any
// number of concurrent callers succeeds.
func (s *Store) consumeLaunchToken(ctx context.Context, tok string, now time.Time) error {
	res, err := s.db.ExecContext(ctx, `UPDATE launch_tokens SET consumed_at = ?
		WHERE token_hash = ? AND consumed_at IS NULL`, formatTime(now), launchKey(tok))
	if err != nil {
		return fmt.Errorf("consume launch token: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return errLaunchConsumed
	}
	return nil
}

// dropAppLaunchTokens removes an app's unused launch tokens (D7).
func (s *Store) dropAppLaunchTokens(ctx context.Context, appID string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM launch_tokens WHERE app_id = ? AND consumed_at IS NULL`, appID)
	if err != nil {
		return fmt.Errorf("drop launch tokens of %s: %w", appID, err)
	}
	return nil
}

// Agent is a registered agent identity.
type Agent struct {
	ID        string
	PublicKey []byte
	OrchID    string
	TaskID    string
	Scope     []string
	AppID     string
}

func (s *Store) saveAgent(ctx context.Context, a Agent, now time.Time) error {
	scope, err := json.Marshal(a.Scope)
	if err != nil {
		return fmt.Errorf("save agent: %w", err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO agents(agent_id, public_key, orch_id, task_id, scope, app_id, registered_at)
		VALUES (?,?,?,?,?,?,?)`, a.ID, a.PublicKey, a.OrchID, a.TaskID, string(scope), a.AppID, formatTime(now))
	if err != nil {
		return fmt.Errorf("save agent: %w", err)
	}
	return nil
}

func (s *Store) agentExists(ctx context.Context, id string) (bool, error) {
	var one int
	err := s.db.QueryRowContext(ctx, `SELECT 1 FROM agents WHERE agent_id = ?`, id).Scan(&one)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("lookup agent: %w", err)
	}
	return true, nil
}
