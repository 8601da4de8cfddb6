package broker_test

import (
	"context"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/sqlite"
)

// The broker's own tests run on SQLite; the storage contract suite and the
// fleet tests cover PostgreSQL.
func init() {
	broker.SetTestDatabase(func(ctx context.Context, path string) (broker.Database, error) {
		return sqlite.Open(ctx, path, sqlite.Options{})
	})
}
