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

// revoke inserts a revocation, or returns the one already there. The
// single connection serializes writers, so AUTOINCREMENT ids are
// committed in order and serve as sequence numbers.
func revoke(ctx context.Context, tx *sql.Tx, level, target string, now time.Time) (broker.Revocation, error) {
	r := broker.Revocation{Level: level, Target: target}
	if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO revocations(level, target, revoked_at) VALUES (?, ?, ?)`,
		level, target, sqlq.FormatTime(now)); err != nil {
		return r, err
	}
	var at string
	if err := tx.QueryRowContext(ctx, `SELECT id, revoked_at FROM revocations WHERE level = ? AND target = ?`,
		level, target).Scan(&r.Seq, &at); err != nil {
		return r, err
	}
	var err error
	r.RevokedAt, err = sqlq.Time(at)
	return r, err
}

// Revoke implements broker.RevocationDB.
func (d *DB) Revoke(ctx context.Context, level, target string, now time.Time) (broker.Revocation, error) {
	var r broker.Revocation
	err := d.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		r, err = revoke(ctx, tx, level, target, now)
		return err
	})
	if err != nil {
		return r, fmt.Errorf("revoke %s %s: %w", level, target, err)
	}
	d.changed(broker.Change{Kind: broker.ChangeRevocation, Seq: r.Seq})
	return r, nil
}

// RevocationsSince implements broker.RevocationDB.
func (d *DB) RevocationsSince(ctx context.Context, seq int64, limit int) ([]broker.Revocation, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT id, level, target, revoked_at FROM revocations WHERE id > ? ORDER BY id LIMIT ?`, seq, limit)
	if err != nil {
		return nil, fmt.Errorf("read revocations: %w", err)
	}
	defer rows.Close()
	var out []broker.Revocation
	for rows.Next() {
		var r broker.Revocation
		var at string
		if err := rows.Scan(&r.Seq, &r.Level, &r.Target, &at); err != nil {
			return nil, fmt.Errorf("read revocations: %w", err)
		}
		if r.RevokedAt, err = sqlq.Time(at); err != nil {
			return nil, fmt.Errorf("read revocations: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// RevocationHead implements broker.RevocationDB.
func (d *DB) RevocationHead(ctx context.Context) (int64, error) {
	var seq int64
	if err := d.db.QueryRowContext(ctx, `SELECT coalesce(max(id), 0) FROM revocations`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("read the revocation head: %w", err)
	}
	return seq, nil
}

// head reads the chain's newest link inside tx.
func head(ctx context.Context, q interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}) (broker.AuditHead, error) {
	h := broker.AuditHead{Hash: broker.GenesisHash}
	var ts string
	err := q.QueryRowContext(ctx, `SELECT seq, hash, timestamp FROM audit_events ORDER BY seq DESC LIMIT 1`).Scan(&h.Seq, &h.Hash, &ts)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return h, nil
	case err != nil:
		return h, err
	}
	h.Timestamp, err = sqlq.Time(ts)
	return h, err
}

// AppendAudit implements broker.AuditDB.
func (d *DB) AppendAudit(ctx context.Context, events []broker.Event, now time.Time) error {
	err := d.inTx(ctx, func(tx *sql.Tx) error {
		h, err := head(ctx, tx)
		if err != nil {
			return err
		}
		broker.ChainEvents(events, h, now)
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO audit_events (`+sqlq.InsertAuditColumns+`) VALUES (`+
			sqlq.Params(sqlq.Question, 1, 16)+`)`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for i := range events {
			e := &events[i]
			ts, err := sqlq.Time(e.Timestamp)
			if err != nil {
				return err
			}
			if _, err := stmt.ExecContext(ctx, sqlq.EventArgs(e, ts.UnixNano())...); err != nil {
				return fmt.Errorf("%s: %w", e.EventType, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}

// AuditHead implements broker.AuditDB.
func (d *DB) AuditHead(ctx context.Context) (broker.AuditHead, error) {
	h, err := head(ctx, d.db)
	if err != nil {
		return h, fmt.Errorf("audit head: %w", err)
	}
	return h, nil
}

// QueryAudit implements broker.AuditDB.
func (d *DB) QueryAudit(ctx context.Context, f broker.AuditFilter) ([]broker.Event, int, error) {
	where, args, tail, all := sqlq.AuditQuery(f, sqlq.Question)
	var total int
	if !f.NoTotal {
		if err := d.db.QueryRowContext(ctx, `SELECT count(*) FROM audit_events`+where, args...).Scan(&total); err != nil {
			return nil, 0, fmt.Errorf("query audit: %w", err)
		}
	}
	rows, err := d.db.QueryContext(ctx, `SELECT `+sqlq.AuditColumns+` FROM audit_events`+where+tail, all...)
	if err != nil {
		return nil, 0, fmt.Errorf("query audit: %w", err)
	}
	defer rows.Close()
	events := []broker.Event{}
	for rows.Next() {
		var e broker.Event
		if err := sqlq.ScanEvent(rows, &e); err != nil {
			return nil, 0, fmt.Errorf("query audit: %w", err)
		}
		events = append(events, e)
	}
	return events, total, rows.Err()
}

// PruneAudit implements broker.AuditDB.
func (d *DB) PruneAudit(ctx context.Context, seq int64) (int64, error) {
	res, err := d.db.ExecContext(ctx, `DELETE FROM audit_events WHERE seq <= ?`, seq)
	if err != nil {
		return 0, fmt.Errorf("prune audit: %w", err)
	}
	return res.RowsAffected()
}
