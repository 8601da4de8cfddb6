package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// Advisory lock keys (pg_advisory_xact_lock): arbitrary constants that
// only this program takes, per database. Transaction-level locks cannot
// outlive their transaction, so a replica that dies while holding one
// blocks nobody.
const (
	lockMigrate int64 = 0x6167_7772_6974_0001 // "agwrit" 1
	lockKeys    int64 = 0x6167_7772_6974_0002 // "agwrit" 2
)

// notifyChannel is the LISTEN/NOTIFY channel of change notices. Payloads
// are "revocation:<seq>" and "keys".
const notifyChannel = "agentwrit_changes"

// migrations are the schema's versions, forward only: migrations[i] brings
// a database from version i to i+1, recorded in schema_migrations.
//
// The tables follow the SQLite implementation's (broker/storage/sqlite),
// column for column, with these additions: apps and signing_keys keep
// their insertion order in an identity column (SQLite's rowid);
// revocation numbers come from the counters row, the audit chain's head
// is the audit_head row, and nonces are shared. Times are stored as
// SQLite stores them: RFC 3339 text where they are read back (exactly,
// nanoseconds included; audit timestamps are the very string that was
// hashed), Unix seconds or nanoseconds where they are compared.
//
// nonces is UNLOGGED: a nonce lives 30 seconds, its commit need not wait
// for a WAL flush (it is on the path of every registration), and a crash
// or failover empties the table, which can only make outstanding
// challenges unknown (the agent fetches another), never replayable.
//
// Triggers send the change notices, inside the transaction that commits
// the change (PostgreSQL delivers a NOTIFY only on commit), whatever
// statement made it.
var migrations = []string{`
CREATE TABLE apps (
	pos                BIGINT GENERATED ALWAYS AS IDENTITY,
	app_id             TEXT PRIMARY KEY,
	name               TEXT NOT NULL UNIQUE,
	client_id          TEXT NOT NULL UNIQUE,
	client_secret_hash TEXT NOT NULL,
	scope_ceiling      TEXT NOT NULL,
	token_ttl          BIGINT NOT NULL DEFAULT 1800,
	status             TEXT NOT NULL DEFAULT 'active',
	created_at         TEXT NOT NULL,
	updated_at         TEXT NOT NULL,
	created_by         TEXT NOT NULL DEFAULT ''
);
CREATE INDEX apps_pos ON apps(pos);

CREATE TABLE launch_tokens (
	token_hash    TEXT PRIMARY KEY,
	agent_name    TEXT NOT NULL,
	allowed_scope TEXT NOT NULL,
	max_ttl       BIGINT NOT NULL,
	single_use    BOOLEAN NOT NULL,
	created_at    TEXT NOT NULL,
	expires_at    BIGINT NOT NULL,
	consumed_at   TEXT,
	created_by    TEXT NOT NULL,
	app_id        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX launch_tokens_app ON launch_tokens(app_id);
CREATE INDEX launch_tokens_expires ON launch_tokens(expires_at);

CREATE TABLE agents (
	agent_id      TEXT PRIMARY KEY,
	public_key    BYTEA NOT NULL,
	orch_id       TEXT NOT NULL,
	task_id       TEXT NOT NULL,
	scope         TEXT NOT NULL,
	app_id        TEXT NOT NULL DEFAULT '',
	launch_token  TEXT NOT NULL DEFAULT '',
	registered_at TEXT NOT NULL
);

CREATE TABLE tokens (
	jti        TEXT PRIMARY KEY,
	subject    TEXT NOT NULL,
	parent     TEXT NOT NULL DEFAULT '',
	task_id    TEXT NOT NULL DEFAULT '',
	orch_id    TEXT NOT NULL DEFAULT '',
	scope      TEXT NOT NULL,
	depth      INTEGER NOT NULL DEFAULT 0,
	root       TEXT NOT NULL DEFAULT '',
	issued_at  BIGINT NOT NULL,
	expires_at BIGINT NOT NULL
);
CREATE INDEX tokens_expires ON tokens(expires_at);
CREATE INDEX tokens_subject ON tokens(subject);

CREATE TABLE signing_keys (
	pos         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	private_key BYTEA NOT NULL,
	created_at  TEXT NOT NULL,
	retire_at   TEXT
);

CREATE TABLE counters (
	name  TEXT PRIMARY KEY,
	value BIGINT NOT NULL
);
INSERT INTO counters(name, value) VALUES ('revocation', 0);

CREATE TABLE revocations (
	id         BIGINT PRIMARY KEY,
	level      TEXT NOT NULL,
	target     TEXT NOT NULL,
	revoked_at TEXT NOT NULL,
	UNIQUE (level, target)
);

CREATE TABLE audit_events (
	seq               BIGINT PRIMARY KEY,
	id                TEXT NOT NULL UNIQUE,
	timestamp         TEXT NOT NULL,
	ts_unix_nano      BIGINT NOT NULL,
	event_type        TEXT NOT NULL,
	agent_id          TEXT NOT NULL DEFAULT '',
	task_id           TEXT NOT NULL DEFAULT '',
	orch_id           TEXT NOT NULL DEFAULT '',
	detail            TEXT NOT NULL DEFAULT '',
	resource          TEXT,
	outcome           TEXT,
	deleg_depth       INTEGER,
	deleg_chain_hash  TEXT,
	bytes_transferred BIGINT,
	hash              TEXT NOT NULL,
	prev_hash         TEXT NOT NULL
);
CREATE INDEX audit_event_type ON audit_events(event_type);
CREATE INDEX audit_agent_id ON audit_events(agent_id);
CREATE INDEX audit_task_id ON audit_events(task_id);
CREATE INDEX audit_ts ON audit_events(ts_unix_nano);
CREATE INDEX audit_outcome ON audit_events(outcome);

-- The chain's newest link; one row, locked by every append.
CREATE TABLE audit_head (
	one       BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
	seq       BIGINT NOT NULL,
	hash      TEXT NOT NULL,
	timestamp TEXT NOT NULL
);
INSERT INTO audit_head(seq, hash, timestamp) VALUES (0, '` + broker.GenesisHash + `', '');

CREATE UNLOGGED TABLE nonces (
	nonce      TEXT PRIMARY KEY,
	expires_at BIGINT NOT NULL, -- Unix nanoseconds
	consumed   BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX nonces_expires ON nonces(expires_at);

CREATE FUNCTION agentwrit_notify_revocation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_notify('` + notifyChannel + `', 'revocation:' || NEW.id);
	RETURN NULL;
END $$;
CREATE TRIGGER revocations_notify AFTER INSERT ON revocations
	FOR EACH ROW EXECUTE FUNCTION agentwrit_notify_revocation();

CREATE FUNCTION agentwrit_notify_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_notify('` + notifyChannel + `', 'keys');
	RETURN NULL;
END $$;
CREATE TRIGGER signing_keys_notify AFTER INSERT OR UPDATE OR DELETE ON signing_keys
	FOR EACH STATEMENT EXECUTE FUNCTION agentwrit_notify_keys();
`, `
ALTER TABLE agents ADD COLUMN agent_name TEXT NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN launch_scope TEXT NOT NULL DEFAULT '[]';
CREATE INDEX agents_registered ON agents(registered_at);
CREATE INDEX agents_launch_token ON agents(launch_token);
CREATE INDEX agents_app ON agents(app_id);

CREATE TABLE usage (
	hour       BIGINT NOT NULL,
	agent_id   TEXT NOT NULL,
	task_id    TEXT NOT NULL DEFAULT '',
	orch_id    TEXT NOT NULL DEFAULT '',
	rule       TEXT NOT NULL,
	required   TEXT NOT NULL,
	granted    TEXT NOT NULL DEFAULT '',
	result     TEXT NOT NULL,
	count      BIGINT NOT NULL,
	first_seen BIGINT NOT NULL,
	last_seen  BIGINT NOT NULL,
	PRIMARY KEY (hour, agent_id, rule, required, granted, result)
);
CREATE INDEX usage_agent ON usage(agent_id, hour);

CREATE TABLE decisions (
	minute BIGINT NOT NULL,
	result TEXT NOT NULL,
	reason TEXT NOT NULL,
	count  BIGINT NOT NULL,
	PRIMARY KEY (minute, result, reason)
);
`}

// checkSchema migrates the database, or (read-only) checks that it needs
// no migration.
func (d *DB) checkSchema(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, migrateTimeout)
	defer cancel()
	if d.readOnly {
		v, err := version(ctx, d.pool)
		if err == nil && v != len(migrations) {
			err = versionError(v)
		}
		return d.fail("open "+d.location+": schema", err)
	}
	for {
		done, err := d.migrateOne(ctx)
		if err != nil {
			return d.fail("open "+d.location+": migrate", err)
		}
		if done {
			return nil
		}
	}
}

func versionError(v int) error {
	if v > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this build knows (%d): upgrade caddy-agentwrit", v, len(migrations))
	}
	return fmt.Errorf("schema version %d, want %d: open the database once read-write to migrate it", v, len(migrations))
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// version is the highest applied migration, 0 for an empty database.
func version(ctx context.Context, q querier) (int, error) {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		return 0, err
	}
	var v int
	err := q.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

// migrateOne applies the next migration in its own transaction, which
// first takes the migration lock and then re-reads the version: of
// replicas starting at once, one migrates while the others wait, then
// find nothing left to do. DDL is transactional in PostgreSQL, so a
// migration that fails (or a replica that dies) leaves no half schema.
func (d *DB) migrateOne(ctx context.Context) (done bool, err error) {
	// DDL on a large table may take longer than a request may, and a busy
	// client may pause between a migration's statements for longer than
	// a request's transaction may stay idle: the pool's timeouts are off
	// on this connection, set before BEGIN, and ctx bounds the migration.
	// The connection leaves the pool for good, with its settings.
	pc, err := d.pool.Acquire(ctx)
	if err != nil {
		return false, err
	}
	conn := pc.Hijack()
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0`); err != nil {
		return false, err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockMigrate); err != nil {
		return false, err
	}
	v, err := version(ctx, tx)
	switch {
	case err != nil:
		return false, err
	case v == len(migrations):
		return true, nil
	case v > len(migrations):
		return false, versionError(v)
	}
	if v == 0 {
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version    INTEGER PRIMARY KEY,
			applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
		)`); err != nil {
			return false, err
		}
	}
	if _, err := tx.Exec(ctx, migrations[v]); err != nil {
		return false, fmt.Errorf("to version %d: %w", v+1, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations(version) VALUES ($1)`, v+1); err != nil {
		return false, fmt.Errorf("to version %d: %w", v+1, err)
	}
	return false, tx.Commit(ctx)
}
