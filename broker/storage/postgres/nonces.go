package postgres

import (
	"context"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/internal/sqlq"
)

// PutNonce implements broker.NonceDB.
func (d *DB) PutNonce(ctx context.Context, nonce string, expires time.Time) error {
	return d.exec(ctx, "store nonce", `INSERT INTO nonces(nonce, expires_at) VALUES ($1, $2)`,
		nonce, sqlq.UnixNano(expires))
}

// consumeNonce marks the nonce used if it is unused and unexpired, and
// returns whether it did, with the row as it was before: one round trip
// that also says why it missed.
const consumeNonce = `WITH used AS (
	UPDATE nonces SET consumed = true
	WHERE nonce = $1 AND NOT consumed AND expires_at >= $2
	RETURNING 1
)
SELECT EXISTS (SELECT FROM used), consumed, expires_at FROM nonces WHERE nonce = $1`

// ConsumeNonce implements broker.NonceDB. Concurrent consumers of one
// nonce queue on its row; the first one's update wins and the others,
// re-checking after its commit, match nothing.
func (d *DB) ConsumeNonce(ctx context.Context, nonce string, now time.Time) error {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	var won, consumed bool
	var expires int64
	err := d.pool.QueryRow(ctx, consumeNonce, nonce, sqlq.UnixNano(now)).Scan(&won, &consumed, &expires)
	switch {
	case errNoRows(err):
		err = broker.ErrNotFound
	case err != nil, won:
	case consumed:
		err = broker.ErrConsumed
	case expires < sqlq.UnixNano(now):
		err = broker.ErrNotFound
	default:
		// Unused and valid when the statement began, yet not won: a
		// concurrent consumer took it first.
		err = broker.ErrConsumed
	}
	return d.fail("consume nonce", err)
}

// PruneNonces implements broker.NonceDB.
func (d *DB) PruneNonces(ctx context.Context, before time.Time) error {
	return d.exec(ctx, "prune nonces", `DELETE FROM nonces WHERE expires_at < $1`, sqlq.UnixNano(before))
}
