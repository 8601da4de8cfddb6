// Package storage opens the broker's Database named by a configuration's
// database option: a file path for SQLite, or a postgres:// (or
// postgresql://) URL for PostgreSQL.
package storage

import (
	"context"
	"net/url"
	"strings"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/postgres"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/sqlite"
)

// Options configure Open.
type Options struct {
	// ReadOnly opens without writing anything (offline verification).
	ReadOnly bool
	// MaxConns is PostgreSQL's connection pool size per process; 0 means
	// postgres.DefaultMaxConns. SQLite ignores it (one connection).
	MaxConns int32
	// StatementTimeout bounds each PostgreSQL statement; 0 means
	// postgres.DefaultStatementTimeout, negative disables it. SQLite
	// ignores it.
	StatementTimeout time.Duration
}

// IsURL reports whether dsn names a PostgreSQL database rather than a file.
func IsURL(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// Open opens the database dsn names.
func Open(ctx context.Context, dsn string, o Options) (broker.Database, error) {
	if IsURL(dsn) {
		db, err := postgres.Open(ctx, dsn, postgres.Options{
			MaxConns: o.MaxConns, StatementTimeout: o.StatementTimeout, ReadOnly: o.ReadOnly,
		})
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return db, nil
	}
	return sqlite.Open(ctx, dsn, sqlite.Options{ReadOnly: o.ReadOnly})
}

// Redact returns dsn without a password, for logs and errors. A file path
// is returned as is.
func Redact(dsn string) string {
	if !IsURL(dsn) {
		return dsn
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return "postgres://(unparsable URL)"
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	q := u.Query()
	if q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.String()
}
