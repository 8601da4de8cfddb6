package postgres

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/internal/sqlq"
)

// CreateLaunchToken implements broker.LaunchTokenDB.
func (d *DB) CreateLaunchToken(ctx context.Context, hash string, lt *broker.LaunchToken) error {
	return d.exec(ctx, "create launch token", `INSERT INTO launch_tokens (token_hash, agent_name, allowed_scope,
		max_ttl, single_use, created_at, expires_at, created_by, app_id) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)`,
		hash, lt.AgentName, list(lt.AllowedScope), lt.MaxTTL, lt.SingleUse, sqlq.FormatTime(lt.CreatedAt),
		lt.ExpiresAt.Unix(), lt.CreatedBy, lt.AppID)
}

// LaunchToken implements broker.LaunchTokenDB.
func (d *DB) LaunchToken(ctx context.Context, hash string) (*broker.LaunchToken, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	lt := &broker.LaunchToken{}
	err := d.pool.QueryRow(ctx, `SELECT agent_name, allowed_scope, max_ttl, single_use, created_at, expires_at,
		consumed_at, created_by, app_id FROM launch_tokens WHERE token_hash = $1`, hash).
		Scan(&lt.AgentName, (*list)(&lt.AllowedScope), &lt.MaxTTL, &lt.SingleUse, (*rfc3339)(&lt.CreatedAt),
			(*unixSeconds)(&lt.ExpiresAt), (*rfc3339)(&lt.ConsumedAt), &lt.CreatedBy, &lt.AppID)
	return found(lt, d.fail("lookup launch token", notFound(err)))
}

// PruneLaunchTokens implements broker.LaunchTokenDB.
func (d *DB) PruneLaunchTokens(ctx context.Context, before time.Time) error {
	return d.exec(ctx, "prune launch tokens", `DELETE FROM launch_tokens WHERE expires_at < $1`, before.Unix())
}

// register is Register's one statement. It consumes the launch token $1
// (unless $1 is ""), and only if that matched stores the agent, and only
// if that was stored its token: a single statement commits all or none.
// Of concurrent consumers of one token, the first to update the row wins;
// the others wait for its commit, re-check consumed_at IS NULL, match
// nothing, and store nothing.
const register = `WITH consumed AS (
	UPDATE launch_tokens SET consumed_at = $2
	WHERE $1 <> '' AND token_hash = $1 AND consumed_at IS NULL
	RETURNING 1
), agent AS (
	INSERT INTO agents(agent_id, public_key, orch_id, task_id, scope, app_id, launch_token, registered_at, agent_name, launch_scope)
	SELECT $3::text, $4::bytea, $5::text, $6::text, $7::text, $8::text, $9::text, $2::text, $20::text, $21::text
	WHERE $1 = '' OR EXISTS (SELECT FROM consumed)
	RETURNING 1
)
INSERT INTO tokens(jti, subject, parent, task_id, orch_id, scope, depth, root, issued_at, expires_at)
SELECT $10::text, $11::text, $12::text, $13::text, $14::text, $15::text, $16::integer, $17::text, $18::bigint, $19::bigint
FROM agent`

// Register implements broker.AgentDB in one round trip.
func (d *DB) Register(ctx context.Context, r *broker.Registration) error {
	a, t := &r.Agent, &r.Token
	ctx, cancel := d.bound(ctx)
	defer cancel()
	tag, err := d.pool.Exec(ctx, register, r.ConsumeLaunchToken, sqlq.FormatTime(a.RegisteredAt),
		a.ID, a.PublicKey, a.OrchID, a.TaskID, list(a.Scope), a.AppID, a.LaunchToken,
		t.JTI, t.Subject, t.Parent, t.TaskID, t.OrchID, list(t.Scope), t.Depth, t.Root, t.IssuedAt.Unix(), t.ExpiresAt.Unix(),
		a.AgentName, list(a.LaunchScope))
	if err == nil && tag.RowsAffected() == 0 {
		err = broker.ErrConsumed
	}
	return d.fail("register "+a.ID, err)
}

// AgentExists implements broker.AgentDB.
func (d *DB) AgentExists(ctx context.Context, id string) (bool, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	var ok bool
	err := d.pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM agents WHERE agent_id = $1)`, id).Scan(&ok)
	return ok, d.fail("lookup agent", err)
}

// SaveToken implements broker.AgentDB.
func (d *DB) SaveToken(ctx context.Context, t *broker.TokenRecord) error {
	return d.exec(ctx, "record token", `INSERT INTO tokens(jti, subject, parent, task_id, orch_id, scope, depth,
		root, issued_at, expires_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)`,
		t.JTI, t.Subject, t.Parent, t.TaskID, t.OrchID, list(t.Scope), t.Depth, t.Root, t.IssuedAt.Unix(), t.ExpiresAt.Unix())
}

// Token implements broker.AgentDB.
func (d *DB) Token(ctx context.Context, jti string) (*broker.TokenRecord, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	t := &broker.TokenRecord{}
	err := sqlq.ScanToken(d.pool.QueryRow(ctx, `SELECT `+sqlq.TokenColumns+` FROM tokens t WHERE jti = $1`, jti), t)
	return found(t, d.fail("lookup token", notFound(err)))
}

// PruneTokens implements broker.AgentDB.
func (d *DB) PruneTokens(ctx context.Context, before time.Time) error {
	return d.exec(ctx, "prune tokens", `DELETE FROM tokens WHERE expires_at < $1`, before.Unix())
}

// exec runs one statement on the pool.
func (d *DB) exec(ctx context.Context, op, sql string, args ...any) error {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	_, err := d.pool.Exec(ctx, sql, args...)
	return d.fail(op, err)
}

// Agents implements broker.AgentDB.
func (d *DB) Agents(ctx context.Context, f broker.AgentFilter) ([]broker.AgentView, int, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	where, args := sqlq.AgentQuery(f, sqlq.Dollar)
	var total int
	if err := d.pool.QueryRow(ctx, `SELECT count(*) FROM agents a`+where, args...).Scan(&total); err != nil {
		return nil, 0, d.fail("list agents", err)
	}
	limit := int64(f.Limit)
	if limit <= 0 {
		limit = math.MaxInt64
	}
	n := len(args)
	rows, err := d.pool.Query(ctx, `SELECT `+sqlq.AgentColumns+` FROM agents a`+where+
		fmt.Sprintf(` ORDER BY a.registered_at DESC, a.agent_id LIMIT $%d OFFSET $%d`, n+1, n+2), append(args, limit, max(f.Offset, 0))...)
	if err != nil {
		return nil, 0, d.fail("list agents", err)
	}
	views := []broker.AgentView{}
	byID := map[string]int{}
	ids := []string{}
	for rows.Next() {
		var v broker.AgentView
		if err := sqlq.ScanAgent(rows, &v.Agent); err != nil {
			rows.Close()
			return nil, 0, fmt.Errorf("list agents: %w", err)
		}
		byID[v.ID] = len(views)
		ids = append(ids, v.ID)
		views = append(views, v)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(views) == 0 {
		return views, total, d.fail("list agents", err)
	}
	trows, err := d.pool.Query(ctx, `SELECT `+sqlq.TokenColumns+` FROM tokens t WHERE `+fmt.Sprintf(sqlq.LiveToken, "$1")+
		` AND t.subject = ANY($2) ORDER BY t.expires_at DESC`, f.Now.Unix(), ids)
	if err != nil {
		return nil, 0, d.fail("list agents' tokens", err)
	}
	defer trows.Close()
	return views, total, d.fail("list agents' tokens", sqlq.AttachTokens(trows, views, byID))
}

// Stats implements broker.AgentDB.
func (d *DB) Stats(ctx context.Context, now time.Time) (broker.Stats, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	var s broker.Stats
	live := fmt.Sprintf(sqlq.LiveToken, "$1")
	err := d.pool.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM agents),
		(SELECT count(DISTINCT t.subject) FROM tokens t WHERE t.subject LIKE 'spiffe://%' AND `+live+`),
		(SELECT count(*) FROM tokens t WHERE `+live+`),
		(SELECT count(*) FROM revocations)`, now.Unix()).Scan(&s.Agents, &s.LiveAgents, &s.LiveTokens, &s.Revocations)
	return s, d.fail("stats", err)
}
