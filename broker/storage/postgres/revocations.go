package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/internal/sqlq"
)

// lockRevocations takes the revocation counter's row lock, held until
// the transaction ends: the next revoker waits for this one's commit, so
// sequence numbers are committed in order.
const lockRevocations = `SELECT FROM counters WHERE name = 'revocation' FOR UPDATE`

// insertRevocation runs after lockRevocations, so (read committed: a
// statement sees what committed before it started) it sees every
// revocation committed before the lock was granted. It returns the stored
// record of (level, target), inserting it under the next number if there
// is none; an existing record consumes no number.
const insertRevocation = `WITH existing AS (
	SELECT id, revoked_at FROM revocations WHERE level = $1 AND target = $2
), next AS (
	UPDATE counters SET value = value + 1
	WHERE name = 'revocation' AND NOT EXISTS (SELECT FROM existing)
	RETURNING value
), added AS (
	INSERT INTO revocations(id, level, target, revoked_at)
	SELECT value, $1::text, $2::text, $3::text FROM next
	RETURNING id, revoked_at
)
SELECT id, revoked_at FROM added UNION ALL SELECT id, revoked_at FROM existing`

type batcher interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// revoke appends the revocation statements to b and sends it: on the
// pool, one round trip in one implicit transaction; in tx, part of it.
func revoke(ctx context.Context, s batcher, b *pgx.Batch, level, target string, now time.Time) (broker.Revocation, error) {
	r := broker.Revocation{Level: level, Target: target}
	b.Queue(lockRevocations)
	b.Queue(insertRevocation, level, target, sqlq.FormatTime(now)).QueryRow(func(row pgx.Row) error {
		return row.Scan(&r.Seq, (*rfc3339)(&r.RevokedAt))
	})
	return r, s.SendBatch(ctx, b).Close()
}

// Revoke implements broker.RevocationDB in one round trip; the trigger
// on revocations tells every replica.
func (d *DB) Revoke(ctx context.Context, level, target string, now time.Time) (broker.Revocation, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	r, err := revoke(ctx, d.pool, &pgx.Batch{}, level, target, now)
	return r, d.fail("revoke "+level+" "+target, err)
}

// RevocationsSince implements broker.RevocationDB.
func (d *DB) RevocationsSince(ctx context.Context, seq int64, limit int) ([]broker.Revocation, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	rows, err := d.pool.Query(ctx, `SELECT id, level, target, revoked_at FROM revocations
		WHERE id > $1 ORDER BY id LIMIT $2`, seq, limit)
	if err != nil {
		return nil, d.fail("read revocations", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (broker.Revocation, error) {
		var r broker.Revocation
		err := row.Scan(&r.Seq, &r.Level, &r.Target, (*rfc3339)(&r.RevokedAt))
		return r, err
	})
	return out, d.fail("read revocations", err)
}

// RevocationHead implements broker.RevocationDB. It reads the rows, not
// the counter: the same view as RevocationsSince.
func (d *DB) RevocationHead(ctx context.Context) (int64, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	var seq int64
	err := d.pool.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM revocations`).Scan(&seq)
	return seq, d.fail("read the revocation head", err)
}
