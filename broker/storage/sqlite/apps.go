package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/internal/sqlq"
)

const appColumns = `app_id, name, client_id, client_secret_hash, scope_ceiling, token_ttl, status, created_at, updated_at, created_by`

func scanApp(row sqlq.Scanner) (*broker.App, error) {
	var a broker.App
	var scopes, created, updated string
	if err := row.Scan(&a.AppID, &a.Name, &a.ClientID, &a.SecretHash, &scopes, &a.TokenTTL, &a.Status,
		&created, &updated, &a.CreatedBy); err != nil {
		return nil, err
	}
	var err error
	if a.Scopes, err = sqlq.ParseList(scopes); err != nil {
		return nil, fmt.Errorf("app %s: %w", a.AppID, err)
	}
	a.CreatedAt, a.UpdatedAt = wholeSeconds(created), wholeSeconds(updated)
	return &a, nil
}

// wholeSeconds renders a stored time as upstream's app timestamps.
func wholeSeconds(s string) string {
	t, err := sqlq.Time(s)
	if err != nil {
		return s
	}
	return broker.WholeSeconds(t)
}

// InsertApp implements broker.AppDB.
func (d *DB) InsertApp(ctx context.Context, a *broker.App) error {
	scopes, err := sqlq.List(a.Scopes)
	if err != nil {
		return fmt.Errorf("register app: %w", err)
	}
	_, err = d.db.ExecContext(ctx, `INSERT INTO apps(`+appColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?)`,
		a.AppID, a.Name, a.ClientID, a.SecretHash, scopes, a.TokenTTL, a.Status, a.CreatedAt, a.UpdatedAt, a.CreatedBy)
	if err != nil {
		if strings.Contains(err.Error(), "UNIQUE constraint failed") {
			return fmt.Errorf("register app %s: %w", a.Name, broker.ErrConflict)
		}
		return fmt.Errorf("register app: %w", err)
	}
	return nil
}

// Apps implements broker.AppDB.
func (d *DB) Apps(ctx context.Context) ([]*broker.App, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT `+appColumns+` FROM apps ORDER BY rowid DESC`)
	if err != nil {
		return nil, fmt.Errorf("list apps: %w", err)
	}
	defer rows.Close()
	apps := []*broker.App{}
	for rows.Next() {
		a, err := scanApp(rows)
		if err != nil {
			return nil, fmt.Errorf("list apps: %w", err)
		}
		apps = append(apps, a)
	}
	return apps, rows.Err()
}

// App implements broker.AppDB.
func (d *DB) App(ctx context.Context, id string) (*broker.App, error) {
	return d.appWhere(ctx, `app_id = ?`, id)
}

// AppByClientID implements broker.AppDB.
func (d *DB) AppByClientID(ctx context.Context, clientID string) (*broker.App, error) {
	return d.appWhere(ctx, `client_id = ?`, clientID)
}

func (d *DB) appWhere(ctx context.Context, cond, v string) (*broker.App, error) {
	a, err := scanApp(d.db.QueryRowContext(ctx, `SELECT `+appColumns+` FROM apps WHERE `+cond, v))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, broker.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get app: %w", err)
	}
	return a, nil
}

// UpdateApp implements broker.AppDB.
func (d *DB) UpdateApp(ctx context.Context, id string, scopes []string, ttl *int64, now time.Time) error {
	var sc any
	if scopes != nil {
		s, err := sqlq.List(scopes)
		if err != nil {
			return fmt.Errorf("update app: %w", err)
		}
		sc = s
	}
	var t any
	if ttl != nil {
		t = *ttl
	}
	res, err := d.db.ExecContext(ctx, `UPDATE apps SET scope_ceiling = coalesce(?, scope_ceiling),
		token_ttl = coalesce(?, token_ttl), updated_at = ? WHERE app_id = ?`, sc, t, sqlq.FormatTime(now), id)
	if err != nil {
		return fmt.Errorf("update app: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return broker.ErrNotFound
	}
	return nil
}

// DeregisterApp implements broker.AppDB.
func (d *DB) DeregisterApp(ctx context.Context, id string, now time.Time) (broker.Revocation, error) {
	var rev broker.Revocation
	err := d.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE apps SET status = ?, updated_at = ? WHERE app_id = ?`,
			broker.AppInactive, sqlq.FormatTime(now), id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return broker.ErrNotFound
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM launch_tokens WHERE app_id = ? AND consumed_at IS NULL`, id); err != nil {
			return err
		}
		rev, err = revoke(ctx, tx, broker.LevelAgent, "app:"+id, now)
		return err
	})
	if err != nil {
		return rev, fmt.Errorf("deregister app %s: %w", id, err)
	}
	d.changed(broker.Change{Kind: broker.ChangeRevocation, Seq: rev.Seq})
	return rev, nil
}
