package postgres

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/internal/sqlq"
)

const selectApps = `SELECT app_id, name, client_id, client_secret_hash, scope_ceiling, token_ttl, status,
	created_at, updated_at, created_by FROM apps`

// scanApp reads a row of selectApps; its times come back in upstream's
// whole-second form, however they were stored.
func scanApp(row pgx.CollectableRow) (*broker.App, error) {
	a := &broker.App{}
	var created, updated rfc3339
	err := row.Scan(&a.AppID, &a.Name, &a.ClientID, &a.SecretHash, (*list)(&a.Scopes), &a.TokenTTL, &a.Status,
		&created, &updated, &a.CreatedBy)
	a.CreatedAt, a.UpdatedAt = broker.WholeSeconds(time.Time(created)), broker.WholeSeconds(time.Time(updated))
	return a, err
}

// InsertApp implements broker.AppDB.
func (d *DB) InsertApp(ctx context.Context, a *broker.App) error {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	_, err := d.pool.Exec(ctx, `INSERT INTO apps(app_id, name, client_id, client_secret_hash, scope_ceiling,
		token_ttl, status, created_at, updated_at, created_by) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)`,
		a.AppID, a.Name, a.ClientID, a.SecretHash, list(a.Scopes), a.TokenTTL, a.Status, a.CreatedAt, a.UpdatedAt, a.CreatedBy)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" { // unique_violation: name or client ID taken
		err = broker.ErrConflict
	}
	return d.fail("register app "+a.Name, err)
}

// Apps implements broker.AppDB.
func (d *DB) Apps(ctx context.Context) ([]*broker.App, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	rows, err := d.pool.Query(ctx, selectApps+` ORDER BY pos DESC`)
	if err != nil {
		return nil, d.fail("list apps", err)
	}
	apps, err := pgx.CollectRows(rows, scanApp)
	if err != nil {
		return nil, d.fail("list apps", err)
	}
	if apps == nil {
		apps = []*broker.App{}
	}
	return apps, nil
}

// App implements broker.AppDB.
func (d *DB) App(ctx context.Context, id string) (*broker.App, error) {
	return d.appWhere(ctx, `app_id`, id)
}

// AppByClientID implements broker.AppDB.
func (d *DB) AppByClientID(ctx context.Context, clientID string) (*broker.App, error) {
	return d.appWhere(ctx, `client_id`, clientID)
}

func (d *DB) appWhere(ctx context.Context, column, v string) (*broker.App, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	rows, err := d.pool.Query(ctx, selectApps+` WHERE `+column+` = $1`, v)
	if err != nil {
		return nil, d.fail("get app", err)
	}
	a, err := pgx.CollectExactlyOneRow(rows, scanApp)
	return found(a, d.fail("get app", notFound(err)))
}

// UpdateApp implements broker.AppDB.
func (d *DB) UpdateApp(ctx context.Context, id string, scopes []string, ttl *int64, now time.Time) error {
	var sc any // NULL: unchanged
	if scopes != nil {
		sc = list(scopes)
	}
	ctx, cancel := d.bound(ctx)
	defer cancel()
	tag, err := d.pool.Exec(ctx, `UPDATE apps SET scope_ceiling = coalesce($1, scope_ceiling),
		token_ttl = coalesce($2, token_ttl), updated_at = $3 WHERE app_id = $4`, sc, ttl, sqlq.FormatTime(now), id)
	if err == nil && tag.RowsAffected() == 0 {
		err = broker.ErrNotFound
	}
	return d.fail("update app", err)
}

// DeregisterApp implements broker.AppDB, in one transaction; the
// revocation's trigger tells every replica. An admin operation, so
// written for clarity: four round trips.
func (d *DB) DeregisterApp(ctx context.Context, id string, now time.Time) (broker.Revocation, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	var rev broker.Revocation
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE apps SET status = $1, updated_at = $2 WHERE app_id = $3`,
			broker.AppInactive, sqlq.FormatTime(now), id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return broker.ErrNotFound
		}
		b := &pgx.Batch{}
		b.Queue(`DELETE FROM launch_tokens WHERE app_id = $1 AND consumed_at IS NULL`, id)
		rev, err = revoke(ctx, tx, b, broker.LevelAgent, "app:"+id, now)
		return err
	})
	return rev, d.fail("deregister app "+id, err)
}
