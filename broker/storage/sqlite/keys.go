package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/internal/sqlq"
)

// SigningKeys implements broker.KeyDB.
func (d *DB) SigningKeys(ctx context.Context) ([]broker.SigningKey, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT private_key, created_at, coalesce(retire_at, '') FROM signing_keys ORDER BY position`)
	if err != nil {
		return nil, fmt.Errorf("signing keys: %w", err)
	}
	defer rows.Close()
	var keys []broker.SigningKey
	for rows.Next() {
		var pemKey []byte
		var created, retire string
		if err := rows.Scan(&pemKey, &created, &retire); err != nil {
			return nil, fmt.Errorf("signing keys: %w", err)
		}
		k, err := decodeKey(pemKey, created, retire)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, rows.Err()
}

func decodeKey(pemKey []byte, created, retire string) (broker.SigningKey, error) {
	var k broker.SigningKey
	var err error
	if k.Private, err = broker.ParseKeyPEM(pemKey); err != nil {
		return k, fmt.Errorf("stored signing key: %w", err)
	}
	if k.CreatedAt, err = sqlq.Time(created); err != nil {
		return k, fmt.Errorf("stored signing key: %w", err)
	}
	if k.RetireAt, err = sqlq.Time(retire); err != nil {
		return k, fmt.Errorf("stored signing key: %w", err)
	}
	return k, nil
}

// InitSigningKey implements broker.KeyDB.
func (d *DB) InitSigningKey(ctx context.Context, k broker.SigningKey) error {
	pemKey, err := broker.MarshalKeyPEM(k.Private)
	if err != nil {
		return err
	}
	return d.inTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO signing_keys(private_key, created_at)
			SELECT ?, ? WHERE NOT EXISTS (SELECT 1 FROM signing_keys)`, pemKey, sqlq.FormatTime(k.CreatedAt))
		return err
	})
}

// RotateSigningKey implements broker.KeyDB.
func (d *DB) RotateSigningKey(ctx context.Context, next broker.SigningKey, retireAt time.Time) error {
	pemKey, err := broker.MarshalKeyPEM(next.Private)
	if err != nil {
		return err
	}
	err = d.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE signing_keys SET retire_at = ? WHERE retire_at IS NULL`,
			sqlq.FormatTime(retireAt)); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO signing_keys(private_key, created_at) VALUES (?, ?)`,
			pemKey, sqlq.FormatTime(next.CreatedAt))
		return err
	})
	if err != nil {
		return fmt.Errorf("rotate signing key: %w", err)
	}
	d.changed(broker.Change{Kind: broker.ChangeKeys})
	return nil
}
