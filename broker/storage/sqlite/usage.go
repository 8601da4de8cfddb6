package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/internal/sqlq"
)

// AddUsage implements broker.UsageDB.
func (d *DB) AddUsage(ctx context.Context, records []broker.UsageRecord, decisions []broker.DecisionCount) error {
	err := d.inTx(ctx, func(tx *sql.Tx) error {
		if len(records) > 0 {
			stmt, err := tx.PrepareContext(ctx, sqlq.UsageUpsert(sqlq.Question, "min", "max"))
			if err != nil {
				return err
			}
			defer stmt.Close()
			for i := range records {
				if _, err := stmt.ExecContext(ctx, sqlq.UsageArgs(&records[i])...); err != nil {
					return err
				}
			}
		}
		for _, c := range decisions {
			if _, err := tx.ExecContext(ctx, sqlq.DecisionUpsert(sqlq.Question), c.Minute.Unix(), c.Result, c.Reason, c.Count); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("add usage: %w", err)
	}
	return nil
}

// QueryUsage implements broker.UsageDB.
func (d *DB) QueryUsage(ctx context.Context, f broker.UsageFilter) ([]broker.UsageRow, error) {
	q, args := sqlq.UsageQuery(f, sqlq.Question)
	rows, err := d.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("query usage: %w", err)
	}
	defer rows.Close()
	out := []broker.UsageRow{}
	for rows.Next() {
		u, err := sqlq.ScanUsageRow(rows)
		if err != nil {
			return nil, fmt.Errorf("query usage: %w", err)
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// Decisions implements broker.UsageDB.
func (d *DB) Decisions(ctx context.Context, since time.Time) ([]broker.DecisionCount, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT minute, result, reason, count FROM decisions WHERE minute >= ? ORDER BY minute, result, reason`, since.Unix())
	if err != nil {
		return nil, fmt.Errorf("query decisions: %w", err)
	}
	defer rows.Close()
	out := []broker.DecisionCount{}
	for rows.Next() {
		var c broker.DecisionCount
		var minute int64
		if err := rows.Scan(&minute, &c.Result, &c.Reason, &c.Count); err != nil {
			return nil, fmt.Errorf("query decisions: %w", err)
		}
		c.Minute = time.Unix(minute, 0).UTC()
		out = append(out, c)
	}
	return out, rows.Err()
}

// PruneUsage implements broker.UsageDB.
func (d *DB) PruneUsage(ctx context.Context, usageBefore, decisionsBefore time.Time) error {
	return d.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM usage WHERE hour < ?`, usageBefore.Unix()); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM decisions WHERE minute < ?`, decisionsBefore.Unix())
		return err
	})
}
