package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/internal/sqlq"
)

// SigningKeys implements broker.KeyDB.
func (d *DB) SigningKeys(ctx context.Context) ([]broker.SigningKey, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	rows, err := d.pool.Query(ctx, `SELECT private_key, created_at, retire_at FROM signing_keys ORDER BY pos`)
	if err != nil {
		return nil, d.fail("signing keys", err)
	}
	keys, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (broker.SigningKey, error) {
		var k broker.SigningKey
		err := row.Scan((*pemKey)(&k.Private), (*rfc3339)(&k.CreatedAt), (*rfc3339)(&k.RetireAt))
		return k, err
	})
	return keys, d.fail("signing keys", err)
}

// InitSigningKey implements broker.KeyDB: under the key lock, the insert
// sees every key committed before it, so of many replicas starting at
// once exactly one stores its key.
func (d *DB) InitSigningKey(ctx context.Context, k broker.SigningKey) error {
	return d.underKeyLock(ctx, "init signing key", func(b *pgx.Batch) {
		b.Queue(`INSERT INTO signing_keys(private_key, created_at)
			SELECT $1::bytea, $2::text WHERE NOT EXISTS (SELECT FROM signing_keys)`,
			pemKey(k.Private), sqlq.FormatTime(k.CreatedAt))
	})
}

// RotateSigningKey implements broker.KeyDB, under the key lock so that
// two rotations at once leave one active key. The trigger on
// signing_keys tells every replica.
func (d *DB) RotateSigningKey(ctx context.Context, next broker.SigningKey, retireAt time.Time) error {
	return d.underKeyLock(ctx, "rotate signing key", func(b *pgx.Batch) {
		b.Queue(`UPDATE signing_keys SET retire_at = $1 WHERE retire_at IS NULL`, sqlq.FormatTime(retireAt))
		b.Queue(`INSERT INTO signing_keys(private_key, created_at) VALUES ($1, $2)`,
			pemKey(next.Private), sqlq.FormatTime(next.CreatedAt))
	})
}

// underKeyLock runs the statements queue adds after taking the key lock,
// in one round trip and one (implicit) transaction; read committed, each
// statement sees what the previous holder committed.
func (d *DB) underKeyLock(ctx context.Context, op string, queue func(*pgx.Batch)) error {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	b := &pgx.Batch{}
	b.Queue(`SELECT pg_advisory_xact_lock($1)`, lockKeys)
	queue(b)
	return d.fail(op, d.pool.SendBatch(ctx, b).Close())
}
