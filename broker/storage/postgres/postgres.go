// Package postgres is the broker's Database on a PostgreSQL server, for a
// fleet: any number of identical replicas open the same database and share
// one state (keys, apps, launch tokens, agents, nonces, revocations, one
// audit chain). It uses pgx's pool (pure Go, no cgo).
//
// What a single SQLite connection gives for free is made explicit here:
//
//   - Revocation sequence numbers come from a counter row locked until the
//     revoking transaction commits, so they are committed in order (a
//     PostgreSQL sequence is not: a later nextval can commit first).
//   - The audit chain's head is a one-row table read FOR UPDATE, so
//     appenders on every replica form one gap-free linear chain.
//   - Single-use launch tokens and nonces are consumed by a conditional
//     UPDATE: of any number of concurrent consumers exactly one matches.
//   - Signing-key initialization and rotation hold an advisory lock.
//   - Schema migrations run under an advisory lock, so replicas starting
//     at once migrate exactly once.
//   - Changes reach other replicas by LISTEN/NOTIFY; notices are sent by
//     triggers inside the committing transaction (see schema.go).
//
// Hot paths are shaped for few round trips: Register, Revoke, ConsumeNonce
// and InitSigningKey are one round trip each, AppendAudit two.
//
// Give the broker a database of its own, or a schema of its own (add
// search_path=<schema> to the URL): its table names, schema_migrations
// included, are plain. The URL's password never appears in Info, errors
// or logs. Behind a transaction-mode connection pooler (PgBouncer), add
// default_query_exec_mode=exec to the URL (no server-side prepared
// statements); notifications then do not work and replicas rely on their
// periodic catch-up.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// Defaults of Options.
const (
	// DefaultMaxConns is the pool size per replica: enough for a replica's
	// concurrent requests (each holds a connection for one round trip or
	// two), small enough that ten replicas stay well under PostgreSQL's
	// default max_connections of 100.
	DefaultMaxConns = 10
	// DefaultStatementTimeout bounds every statement on the server, so a
	// stuck query (a lock held by a hung client, a runaway plan) fails
	// the request with 503 instead of holding it forever.
	DefaultStatementTimeout = 5 * time.Second
	// DefaultConnectTimeout bounds each connection attempt when the URL
	// sets no connect_timeout.
	DefaultConnectTimeout = 5 * time.Second
)

// migrateTimeout bounds Open's migrations, including the wait for another
// replica's: DDL runs without the statement timeout.
const migrateTimeout = 2 * time.Minute

// Options configure Open.
type Options struct {
	// MaxConns is the size of the connection pool; 0 means
	// DefaultMaxConns. Watch uses a connection of its own on top.
	MaxConns int32
	// StatementTimeout is set as every connection's statement_timeout
	// (and idle_in_transaction_session_timeout, so a client that hangs
	// inside a transaction cannot keep a shared lock); 0 means
	// DefaultStatementTimeout, negative disables both. Every operation is
	// also bounded on the client side by this plus the connect timeout,
	// so a server that stops answering cannot hold a request either.
	StatementTimeout time.Duration
	// ReadOnly opens without writing anything: no migration (the schema
	// must be current), and every connection sets
	// default_transaction_read_only, so the server refuses any write.
	ReadOnly bool
}

// DB is a broker.Database and broker.NonceDB on PostgreSQL.
type DB struct {
	pool     *pgxpool.Pool
	conn     *pgx.ConnConfig // for Watch's own connections
	location string          // the URL without its password
	secrets  *strings.Replacer
	readOnly bool
	// opTimeout bounds each operation on the client side; 0: no bound.
	opTimeout time.Duration

	closed  atomic.Bool
	closing context.Context // canceled by Close, ending every Watch
	close   context.CancelFunc
}

var (
	_ broker.Database = (*DB)(nil)
	_ broker.NonceDB  = (*DB)(nil)
)

// Open connects to the database a postgres:// or postgresql:// URL names,
// checks that it answers (bounded by the connect timeout) and, unless
// o.ReadOnly, migrates its schema to the current version.
func Open(ctx context.Context, dsn string, o Options) (*DB, error) {
	cfg, secrets, err := parseConfig(dsn)
	if err != nil {
		return nil, err
	}
	d := &DB{location: redact(dsn), secrets: secrets, readOnly: o.ReadOnly}
	if o.MaxConns < 0 {
		return nil, fmt.Errorf("open %s: %w: negative pool size %d", d.location, broker.ErrBadConfig, o.MaxConns)
	}
	configure(cfg, o)
	cc := cfg.ConnConfig
	if st := statementTimeout(o); st > 0 {
		d.opTimeout = st + cc.ConnectTimeout
	}
	d.conn = cc.Copy()
	d.conn.RuntimeParams["application_name"] += " watch"
	d.closing, d.close = context.WithCancel(context.Background())

	d.pool, err = pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, d.fail("open "+d.location, err)
	}
	pctx, cancel := context.WithTimeout(ctx, cc.ConnectTimeout+statementTimeout(o))
	err = d.fail("open "+d.location, d.pool.Ping(pctx))
	cancel()
	if err != nil {
		d.Close()
		return nil, err
	}
	if err := d.checkSchema(ctx); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func statementTimeout(o Options) time.Duration {
	if o.StatementTimeout == 0 {
		return DefaultStatementTimeout
	}
	return max(o.StatementTimeout, 0)
}

// configure applies o to a parsed pool configuration.
func configure(cfg *pgxpool.Config, o Options) {
	cfg.MaxConns = o.MaxConns
	if cfg.MaxConns == 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	cc := cfg.ConnConfig
	if cc.ConnectTimeout <= 0 {
		cc.ConnectTimeout = DefaultConnectTimeout
	}
	p := cc.RuntimeParams
	if p["application_name"] == "" {
		p["application_name"] = "caddy-agentwrit"
	}
	if st := statementTimeout(o); st > 0 {
		ms := strconv.FormatInt(max(st.Milliseconds(), 1), 10)
		p["statement_timeout"] = ms
		p["idle_in_transaction_session_timeout"] = ms
	}
	if o.ReadOnly {
		p["default_transaction_read_only"] = "on"
	}
}

// bound gives ctx the client-side deadline of one operation, unless it
// already has an earlier one.
func (d *DB) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if d.opTimeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d.opTimeout)
}

// Info implements broker.Database.
func (d *DB) Info() broker.DatabaseInfo {
	return broker.DatabaseInfo{Kind: "postgres", Location: d.location, Shared: true}
}

// Ping implements broker.Database.
func (d *DB) Ping(ctx context.Context) error {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	return d.fail("ping", d.pool.Ping(ctx))
}

// Close implements broker.Database: it ends every Watch and closes the
// pool, waiting for connections in use to be released. Operations after
// Close fail with broker.ErrUnavailable.
func (d *DB) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	d.close()
	if d.pool != nil {
		d.pool.Close()
	}
	return nil
}

// errNoRows tells a miss from a failure.
func errNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }

// notFound is err, or broker.ErrNotFound for a query that found no row.
func notFound(err error) error {
	if errNoRows(err) {
		return broker.ErrNotFound
	}
	return err
}

// found is v, or nil with err: no half-read record escapes.
func found[T any](v *T, err error) (*T, error) {
	if err != nil {
		return nil, err
	}
	return v, nil
}
