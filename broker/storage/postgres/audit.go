package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/internal/sqlq"
)

var insertEvent = `INSERT INTO audit_events (` + sqlq.InsertAuditColumns + `) VALUES (` +
	sqlq.Params(sqlq.Dollar, 1, 16) + `)`

// AppendAudit implements broker.AuditDB. The head row, locked FOR UPDATE
// until commit, serializes appenders on every replica into one chain.
//
// Two round trips: BEGIN and the locking read of the head, then (once
// ChainEvents has hashed the batch in Go) every insert, the new head and
// COMMIT, pipelined. The transaction is written out rather than begun
// with pgx.Tx so that COMMIT rides in the second batch.
func (d *DB) AppendAudit(ctx context.Context, events []broker.Event, now time.Time) error {
	if len(events) == 0 {
		return nil
	}
	ctx, cancel := d.bound(ctx)
	defer cancel()
	conn, err := d.pool.Acquire(ctx)
	if err != nil {
		return d.fail("audit", err)
	}
	// Release destroys a connection still in a transaction, which the
	// server then rolls back; rolling back first frees the head at once.
	defer conn.Release()
	if err = appendAudit(ctx, conn, events, now); err != nil && conn.Conn().PgConn().TxStatus() != 'I' {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		conn.Exec(rctx, `ROLLBACK`) //nolint:errcheck // the connection is destroyed if this fails
		cancel()
	}
	return d.fail("audit", err)
}

func appendAudit(ctx context.Context, conn *pgxpool.Conn, events []broker.Event, now time.Time) error {
	var h broker.AuditHead
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(`SELECT seq, hash, timestamp FROM audit_head FOR UPDATE`).QueryRow(func(row pgx.Row) error {
		return row.Scan(&h.Seq, &h.Hash, (*rfc3339)(&h.Timestamp))
	})
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	head := broker.ChainEvents(events, h, now)
	stamp, err := sqlq.Time(events[0].Timestamp) // one timestamp for the batch
	if err != nil {
		return err
	}
	b = &pgx.Batch{}
	for i := range events {
		b.Queue(insertEvent, sqlq.EventArgs(&events[i], stamp.UnixNano())...)
	}
	b.Queue(`UPDATE audit_head SET seq = $1, hash = $2, timestamp = $3`, head.Seq, head.Hash, events[0].Timestamp)
	b.Queue(`COMMIT`)
	return conn.SendBatch(ctx, b).Close()
}

// AuditHead implements broker.AuditDB.
func (d *DB) AuditHead(ctx context.Context) (broker.AuditHead, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	var h broker.AuditHead
	err := d.pool.QueryRow(ctx, `SELECT seq, hash, timestamp FROM audit_head`).Scan(&h.Seq, &h.Hash, (*rfc3339)(&h.Timestamp))
	return h, d.fail("audit head", err)
}

// QueryAudit implements broker.AuditDB: the count and the page in one
// round trip.
func (d *DB) QueryAudit(ctx context.Context, f broker.AuditFilter) ([]broker.Event, int, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	where, args, tail, all := sqlq.AuditQuery(f, sqlq.Dollar)
	var total int
	events := []broker.Event{}
	b := &pgx.Batch{}
	if !f.NoTotal {
		b.Queue(`SELECT count(*) FROM audit_events`+where, args...).QueryRow(func(row pgx.Row) error {
			return row.Scan(&total)
		})
	}
	b.Queue(`SELECT `+sqlq.AuditColumns+` FROM audit_events`+where+tail, all...).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var e broker.Event
			if err := sqlq.ScanEvent(rows, &e); err != nil {
				return err
			}
			events = append(events, e)
		}
		return rows.Err()
	})
	if err := d.pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, 0, d.fail("query audit", err)
	}
	return events, total, nil
}

// PruneAudit implements broker.AuditDB. The audit_head row is never
// pruned: the anchor appended before is newer than anything deleted.
func (d *DB) PruneAudit(ctx context.Context, seq int64) (int64, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	tag, err := d.pool.Exec(ctx, `DELETE FROM audit_events WHERE seq <= $1`, seq)
	if err != nil {
		return 0, d.fail("prune audit", err)
	}
	return tag.RowsAffected(), nil
}
