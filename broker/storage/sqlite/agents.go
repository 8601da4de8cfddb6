package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/internal/sqlq"
)

// CreateLaunchToken implements broker.LaunchTokenDB.
func (d *DB) CreateLaunchToken(ctx context.Context, hash string, lt *broker.LaunchToken) error {
	scope, err := sqlq.List(lt.AllowedScope)
	if err != nil {
		return fmt.Errorf("create launch token: %w", err)
	}
	_, err = d.db.ExecContext(ctx, `INSERT INTO launch_tokens
		(token_hash, agent_name, allowed_scope, max_ttl, single_use, created_at, expires_at, created_by, app_id)
		VALUES (?,?,?,?,?,?,?,?,?)`,
		hash, lt.AgentName, scope, lt.MaxTTL, lt.SingleUse, sqlq.FormatTime(lt.CreatedAt),
		lt.ExpiresAt.Unix(), lt.CreatedBy, lt.AppID)
	if err != nil {
		return fmt.Errorf("create launch token: %w", err)
	}
	return nil
}

// LaunchToken implements broker.LaunchTokenDB.
func (d *DB) LaunchToken(ctx context.Context, hash string) (*broker.LaunchToken, error) {
	var lt broker.LaunchToken
	var scope, created string
	var expires int64
	var consumed sql.NullString
	err := d.db.QueryRowContext(ctx, `SELECT agent_name, allowed_scope, max_ttl, single_use, created_at, expires_at,
		consumed_at, created_by, app_id FROM launch_tokens WHERE token_hash = ?`, hash).
		Scan(&lt.AgentName, &scope, &lt.MaxTTL, &lt.SingleUse, &created, &expires, &consumed, &lt.CreatedBy, &lt.AppID)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, broker.ErrNotFound
	case err != nil:
		return nil, fmt.Errorf("lookup launch token: %w", err)
	}
	lt.ExpiresAt = time.Unix(expires, 0).UTC()
	if lt.CreatedAt, err = sqlq.Time(created); err != nil {
		return nil, fmt.Errorf("lookup launch token: %w", err)
	}
	if lt.ConsumedAt, err = sqlq.Time(consumed.String); err != nil {
		return nil, fmt.Errorf("lookup launch token: %w", err)
	}
	if lt.AllowedScope, err = sqlq.ParseList(scope); err != nil {
		return nil, fmt.Errorf("lookup launch token: %w", err)
	}
	return &lt, nil
}

// PruneLaunchTokens implements broker.LaunchTokenDB.
func (d *DB) PruneLaunchTokens(ctx context.Context, before time.Time) error {
	_, err := d.db.ExecContext(ctx, `DELETE FROM launch_tokens WHERE expires_at < ?`, before.Unix())
	return err
}

// Register implements broker.AgentDB.
func (d *DB) Register(ctx context.Context, r *broker.Registration) error {
	a := &r.Agent
	scope, err := sqlq.List(a.Scope)
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	err = d.inTx(ctx, func(tx *sql.Tx) error {
		if r.ConsumeLaunchToken != "" {
			res, err := tx.ExecContext(ctx, `UPDATE launch_tokens SET consumed_at = ?
				WHERE token_hash = ? AND consumed_at IS NULL`, sqlq.FormatTime(a.RegisteredAt), r.ConsumeLaunchToken)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil || n != 1 {
				return broker.ErrConsumed
			}
		}
		launchScope, err := sqlq.List(a.LaunchScope)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO agents(agent_id, public_key, orch_id, task_id, scope, app_id, launch_token,
			agent_name, launch_scope, registered_at) VALUES (?,?,?,?,?,?,?,?,?,?)`, a.ID, a.PublicKey, a.OrchID, a.TaskID, scope,
			a.AppID, a.LaunchToken, a.AgentName, launchScope, sqlq.FormatTime(a.RegisteredAt)); err != nil {
			return err
		}
		return saveToken(ctx, tx, &r.Token)
	})
	if err != nil {
		return fmt.Errorf("register %s: %w", a.ID, err)
	}
	return nil
}

// AgentExists implements broker.AgentDB.
func (d *DB) AgentExists(ctx context.Context, id string) (bool, error) {
	var one int
	err := d.db.QueryRowContext(ctx, `SELECT 1 FROM agents WHERE agent_id = ?`, id).Scan(&one)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("lookup agent: %w", err)
	}
	return true, nil
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func saveToken(ctx context.Context, db execer, t *broker.TokenRecord) error {
	scope, err := sqlq.List(t.Scope)
	if err != nil {
		return err
	}
	_, err = db.ExecContext(ctx, `INSERT INTO tokens(jti, subject, parent, task_id, orch_id, scope, depth, root, issued_at, expires_at)
		VALUES (?,?,?,?,?,?,?,?,?,?)`, t.JTI, t.Subject, t.Parent, t.TaskID, t.OrchID, scope, t.Depth, t.Root,
		t.IssuedAt.Unix(), t.ExpiresAt.Unix())
	return err
}

// SaveToken implements broker.AgentDB.
func (d *DB) SaveToken(ctx context.Context, t *broker.TokenRecord) error {
	if err := saveToken(ctx, d.db, t); err != nil {
		return fmt.Errorf("record token: %w", err)
	}
	return nil
}

// Token implements broker.AgentDB.
func (d *DB) Token(ctx context.Context, jti string) (*broker.TokenRecord, error) {
	var t broker.TokenRecord
	err := sqlq.ScanToken(d.db.QueryRowContext(ctx, `SELECT `+sqlq.TokenColumns+` FROM tokens t WHERE jti = ?`, jti), &t)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, broker.ErrNotFound
	case err != nil:
		return nil, fmt.Errorf("lookup token: %w", err)
	}
	return &t, nil
}

// PruneTokens implements broker.AgentDB.
func (d *DB) PruneTokens(ctx context.Context, before time.Time) error {
	_, err := d.db.ExecContext(ctx, `DELETE FROM tokens WHERE expires_at < ?`, before.Unix())
	return err
}

// Agents implements broker.AgentDB.
func (d *DB) Agents(ctx context.Context, f broker.AgentFilter) ([]broker.AgentView, int, error) {
	where, args := sqlq.AgentQuery(f, sqlq.Question)
	var total int
	if err := d.db.QueryRowContext(ctx, `SELECT count(*) FROM agents a`+where, args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("list agents: %w", err)
	}
	limit := int64(f.Limit)
	if limit <= 0 {
		limit = -1
	}
	rows, err := d.db.QueryContext(ctx, `SELECT `+sqlq.AgentColumns+`
		FROM agents a`+where+` ORDER BY a.registered_at DESC, a.agent_id LIMIT ? OFFSET ?`, append(args, limit, max(f.Offset, 0))...)
	if err != nil {
		return nil, 0, fmt.Errorf("list agents: %w", err)
	}
	defer rows.Close()
	views := []broker.AgentView{}
	byID := map[string]int{}
	for rows.Next() {
		var v broker.AgentView
		if err := sqlq.ScanAgent(rows, &v.Agent); err != nil {
			return nil, 0, fmt.Errorf("list agents: %w", err)
		}
		byID[v.ID] = len(views)
		views = append(views, v)
	}
	if err := rows.Err(); err != nil || len(views) == 0 {
		return views, total, err
	}
	ids := make([]any, 0, len(views)+1)
	ids = append(ids, f.Now.Unix())
	for _, v := range views {
		ids = append(ids, v.ID)
	}
	trows, err := d.db.QueryContext(ctx, `SELECT `+sqlq.TokenColumns+` FROM tokens t WHERE `+fmt.Sprintf(sqlq.LiveToken, "?")+
		` AND t.subject IN (`+sqlq.Params(sqlq.Question, 2, len(views))+`) ORDER BY t.expires_at DESC`, ids...)
	if err != nil {
		return nil, 0, fmt.Errorf("list agents' tokens: %w", err)
	}
	defer trows.Close()
	if err := sqlq.AttachTokens(trows, views, byID); err != nil {
		return nil, 0, fmt.Errorf("list agents' tokens: %w", err)
	}
	return views, total, nil
}

// Stats implements broker.AgentDB.
func (d *DB) Stats(ctx context.Context, now time.Time) (broker.Stats, error) {
	var s broker.Stats
	live := fmt.Sprintf(sqlq.LiveToken, "?")
	err := d.db.QueryRowContext(ctx, `SELECT
		(SELECT count(*) FROM agents),
		(SELECT count(DISTINCT t.subject) FROM tokens t WHERE t.subject LIKE 'spiffe://%' AND `+live+`),
		(SELECT count(*) FROM tokens t WHERE `+live+`),
		(SELECT count(*) FROM revocations)`, now.Unix(), now.Unix()).Scan(&s.Agents, &s.LiveAgents, &s.LiveTokens, &s.Revocations)
	if err != nil {
		return s, fmt.Errorf("stats: %w", err)
	}
	return s, nil
}
