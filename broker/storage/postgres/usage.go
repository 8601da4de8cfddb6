package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/internal/sqlq"
)

// AddUsage implements broker.UsageDB in one round trip: every upsert
// pipelined in one batch, which is one implicit transaction.
func (d *DB) AddUsage(ctx context.Context, records []broker.UsageRecord, decisions []broker.DecisionCount) error {
	if len(records) == 0 && len(decisions) == 0 {
		return nil
	}
	ctx, cancel := d.bound(ctx)
	defer cancel()
	var b pgx.Batch
	upsert := sqlq.UsageUpsert(sqlq.Dollar, "LEAST", "GREATEST")
	for i := range records {
		b.Queue(upsert, sqlq.UsageArgs(&records[i])...)
	}
	for _, c := range decisions {
		b.Queue(sqlq.DecisionUpsert(sqlq.Dollar), c.Minute.Unix(), c.Result, c.Reason, c.Count)
	}
	return d.fail("add usage", d.pool.SendBatch(ctx, &b).Close())
}

// QueryUsage implements broker.UsageDB.
func (d *DB) QueryUsage(ctx context.Context, f broker.UsageFilter) ([]broker.UsageRow, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	q, args := sqlq.UsageQuery(f, sqlq.Dollar)
	rows, err := d.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, d.fail("query usage", err)
	}
	defer rows.Close()
	out := []broker.UsageRow{}
	for rows.Next() {
		u, err := sqlq.ScanUsageRow(rows)
		if err != nil {
			return nil, d.fail("query usage", err)
		}
		out = append(out, u)
	}
	return out, d.fail("query usage", rows.Err())
}

// Decisions implements broker.UsageDB.
func (d *DB) Decisions(ctx context.Context, since time.Time) ([]broker.DecisionCount, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	rows, err := d.pool.Query(ctx, `SELECT minute, result, reason, count FROM decisions WHERE minute >= $1 ORDER BY minute, result, reason`, since.Unix())
	if err != nil {
		return nil, d.fail("query decisions", err)
	}
	defer rows.Close()
	out := []broker.DecisionCount{}
	for rows.Next() {
		var c broker.DecisionCount
		if err := rows.Scan((*unixSeconds)(&c.Minute), &c.Result, &c.Reason, &c.Count); err != nil {
			return nil, d.fail("query decisions", err)
		}
		out = append(out, c)
	}
	return out, d.fail("query decisions", rows.Err())
}

// PruneUsage implements broker.UsageDB.
func (d *DB) PruneUsage(ctx context.Context, usageBefore, decisionsBefore time.Time) error {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	var b pgx.Batch
	b.Queue(`DELETE FROM usage WHERE hour < $1`, usageBefore.Unix())
	b.Queue(`DELETE FROM decisions WHERE minute < $1`, decisionsBefore.Unix())
	return d.fail("prune usage", d.pool.SendBatch(ctx, &b).Close())
}
