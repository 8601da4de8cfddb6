package postgres

import "github.com/jackc/pgx/v5/pgxpool"

// SchemaVersion is the version Open migrates to.
var SchemaVersion = len(migrations)

// Pool is d's connection pool, for tests that look behind the interface.
func (d *DB) Pool() *pgxpool.Pool { return d.pool }
