package broker

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// App is a registered application, in the shape GET /v1/admin/apps returns.
type App struct {
	AppID     string   `json:"app_id"`
	Name      string   `json:"name"`
	ClientID  string   `json:"client_id"`
	Scopes    []string `json:"scopes"`
	TokenTTL  int64    `json:"token_ttl"`
	Status    string   `json:"status"`
	CreatedAt string   `json:"created_at"`
	UpdatedAt string   `json:"updated_at"`

	secretHash string
	createdBy  string
}

const (
	appActive   = "active"
	appInactive = "inactive"
)

// wholeSeconds renders a stored RFC3339Nano time as upstream's app
// timestamps: RFC3339 UTC, truncated to the second.
func wholeSeconds(s string) string {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return s
	}
	return t.UTC().Truncate(time.Second).Format(time.RFC3339)
}

const appColumns = `app_id, name, client_id, client_secret_hash, scope_ceiling, token_ttl, status, created_at, updated_at, created_by`

func scanApp(row interface{ Scan(...any) error }) (*App, error) {
	var a App
	var scopes string
	if err := row.Scan(&a.AppID, &a.Name, &a.ClientID, &a.secretHash, &scopes, &a.TokenTTL, &a.Status,
		&a.CreatedAt, &a.UpdatedAt, &a.createdBy); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(scopes), &a.Scopes); err != nil {
		return nil, fmt.Errorf("app %s: scope_ceiling: %w", a.AppID, err)
	}
	a.CreatedAt, a.UpdatedAt = wholeSeconds(a.CreatedAt), wholeSeconds(a.UpdatedAt)
	return &a, nil
}

func (s *Store) insertApp(ctx context.Context, a *App, now time.Time) error {
	scopes, err := json.Marshal(a.Scopes)
	if err != nil {
		return fmt.Errorf("register app: %w", err)
	}
	ts := formatTime(now)
	_, err = s.db.ExecContext(ctx, `INSERT INTO apps(`+appColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?)`,
		a.AppID, a.Name, a.ClientID, a.secretHash, string(scopes), a.TokenTTL, appActive, ts, ts, a.createdBy)
	if err != nil {
		if strings.Contains(err.Error(), "UNIQUE constraint failed") {
			return fmt.Errorf("register app %s: %w", a.Name, ErrConflict)
		}
		return fmt.Errorf("register app: %w", err)
	}
	return nil
}

func (s *Store) listApps(ctx context.Context) ([]*App, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+appColumns+` FROM apps ORDER BY rowid DESC`)
	if err != nil {
		return nil, fmt.Errorf("list apps: %w", err)
	}
	defer rows.Close()
	apps := []*App{}
	for rows.Next() {
		a, err := scanApp(rows)
		if err != nil {
			return nil, fmt.Errorf("list apps: %w", err)
		}
		apps = append(apps, a)
	}
	return apps, rows.Err()
}

func (s *Store) appBy(ctx context.Context, column, value string) (*App, error) {
	a, err := scanApp(s.db.QueryRowContext(ctx, `SELECT `+appColumns+` FROM apps WHERE `+column+` = ?`, value))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get app: %w", err)
	}
	return a, nil
}

// updateApp changes the ceiling and/or token TTL in one statement, so an
// update is all or nothing (D8).
func (s *Store) updateApp(ctx context.Context, id string, scopes []string, ttl *int64, now time.Time) error {
	var sc any
	if scopes != nil {
		b, err := json.Marshal(scopes)
		if err != nil {
			return fmt.Errorf("update app: %w", err)
		}
		sc = string(b)
	}
	var t any
	if ttl != nil {
		t = *ttl
	}
	res, err := s.db.ExecContext(ctx, `UPDATE apps SET scope_ceiling = coalesce(?, scope_ceiling),
		token_ttl = coalesce(?, token_ttl), updated_at = ? WHERE app_id = ?`, sc, t, formatTime(now), id)
	if err != nil {
		return fmt.Errorf("update app: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

func (s *Store) deactivateApp(ctx context.Context, id string, now time.Time) error {
	res, err := s.db.ExecContext(ctx, `UPDATE apps SET status = ?, updated_at = ? WHERE app_id = ?`,
		appInactive, formatTime(now), id)
	if err != nil {
		return fmt.Errorf("deregister app: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}
