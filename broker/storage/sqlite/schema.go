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

// migrations are the schema's versions, forward only: migration i brings
// a database from user_version i to i+1. Version 1 is the schema of the
// first release (CREATE … IF NOT EXISTS, so files it made carry on).
var migrations = []func(ctx context.Context, tx *sql.Tx) error{
	execAll(`
CREATE TABLE IF NOT EXISTS meta (
	key   TEXT PRIMARY KEY,
	value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_events (
	seq               INTEGER PRIMARY KEY,
	id                TEXT NOT NULL UNIQUE,
	timestamp         TEXT NOT NULL,
	ts_unix_nano      INTEGER NOT NULL,
	event_type        TEXT NOT NULL,
	agent_id          TEXT NOT NULL DEFAULT '',
	task_id           TEXT NOT NULL DEFAULT '',
	orch_id           TEXT NOT NULL DEFAULT '',
	detail            TEXT NOT NULL DEFAULT '',
	resource          TEXT,
	outcome           TEXT,
	deleg_depth       INTEGER,
	deleg_chain_hash  TEXT,
	bytes_transferred INTEGER,
	hash              TEXT NOT NULL,
	prev_hash         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_audit_event_type ON audit_events(event_type);
CREATE INDEX IF NOT EXISTS idx_audit_agent_id ON audit_events(agent_id);
CREATE INDEX IF NOT EXISTS idx_audit_task_id ON audit_events(task_id);
CREATE INDEX IF NOT EXISTS idx_audit_ts ON audit_events(ts_unix_nano);
CREATE INDEX IF NOT EXISTS idx_audit_outcome ON audit_events(outcome);
CREATE TABLE IF NOT EXISTS revocations (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	level      TEXT NOT NULL,
	target     TEXT NOT NULL,
	revoked_at TEXT NOT NULL,
	UNIQUE(level, target)
);
CREATE TABLE IF NOT EXISTS apps (
	app_id             TEXT PRIMARY KEY,
	name               TEXT NOT NULL UNIQUE,
	client_id          TEXT NOT NULL UNIQUE,
	client_secret_hash TEXT NOT NULL,
	scope_ceiling      TEXT NOT NULL,
	token_ttl          INTEGER NOT NULL DEFAULT 1800,
	status             TEXT NOT NULL DEFAULT 'active',
	created_at         TEXT NOT NULL,
	updated_at         TEXT NOT NULL,
	created_by         TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS idx_apps_status ON apps(status);
CREATE TABLE IF NOT EXISTS launch_tokens (
	token_hash    TEXT PRIMARY KEY,
	agent_name    TEXT NOT NULL,
	allowed_scope TEXT NOT NULL,
	max_ttl       INTEGER NOT NULL,
	single_use    INTEGER NOT NULL,
	created_at    TEXT NOT NULL,
	expires_at    INTEGER NOT NULL,
	consumed_at   TEXT,
	created_by    TEXT NOT NULL,
	app_id        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS idx_launch_tokens_app ON launch_tokens(app_id);
CREATE TABLE IF NOT EXISTS agents (
	agent_id      TEXT PRIMARY KEY,
	public_key    BLOB NOT NULL,
	orch_id       TEXT NOT NULL,
	task_id       TEXT NOT NULL,
	scope         TEXT NOT NULL,
	app_id        TEXT NOT NULL DEFAULT '',
	registered_at TEXT NOT NULL
);`),
	migrateKeySet,
	execAll(`
ALTER TABLE agents ADD COLUMN agent_name TEXT NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN launch_scope TEXT NOT NULL DEFAULT '[]';
CREATE INDEX idx_agents_launch_token ON agents(launch_token);
CREATE INDEX idx_agents_app ON agents(app_id);
CREATE TABLE usage (
	hour       INTEGER NOT NULL,
	agent_id   TEXT NOT NULL,
	task_id    TEXT NOT NULL DEFAULT '',
	orch_id    TEXT NOT NULL DEFAULT '',
	rule       TEXT NOT NULL,
	required   TEXT NOT NULL,
	granted    TEXT NOT NULL DEFAULT '',
	result     TEXT NOT NULL,
	count      INTEGER NOT NULL,
	first_seen INTEGER NOT NULL,
	last_seen  INTEGER NOT NULL,
	PRIMARY KEY (hour, agent_id, rule, required, granted, result)
);
CREATE INDEX idx_usage_agent ON usage(agent_id, hour);
CREATE TABLE decisions (
	minute INTEGER NOT NULL,
	result TEXT NOT NULL,
	reason TEXT NOT NULL,
	count  INTEGER NOT NULL,
	PRIMARY KEY (minute, result, reason)
);`),
}

// migrateKeySet is version 2: a key set instead of one key, token records,
// and the launch token an agent registered with.
func migrateKeySet(ctx context.Context, tx *sql.Tx) error {
	if err := execAll(`
CREATE TABLE signing_keys (
	position    INTEGER PRIMARY KEY,
	private_key BLOB NOT NULL,
	created_at  TEXT NOT NULL,
	retire_at   TEXT
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
	issued_at  INTEGER NOT NULL,
	expires_at INTEGER NOT NULL
);
CREATE INDEX idx_tokens_expires ON tokens(expires_at);
CREATE INDEX idx_tokens_subject ON tokens(subject);
ALTER TABLE agents ADD COLUMN launch_token TEXT NOT NULL DEFAULT '';
CREATE INDEX idx_agents_registered ON agents(registered_at);
CREATE INDEX idx_launch_tokens_expires ON launch_tokens(expires_at);`)(ctx, tx); err != nil {
		return err
	}
	// The first release kept one key in meta; it becomes the active key.
	var pemKey []byte
	err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'signing_key'`).Scan(&pemKey)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil
	case err != nil:
		return err
	}
	if _, err := broker.ParseKeyPEM(pemKey); err != nil {
		return fmt.Errorf("stored signing key: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO signing_keys(private_key, created_at) VALUES (?, ?)`,
		pemKey, sqlq.FormatTime(time.Now())); err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `DELETE FROM meta WHERE key = 'signing_key'`)
	return err
}

func execAll(stmts string) func(context.Context, *sql.Tx) error {
	return func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, stmts)
		return err
	}
}

// migrate applies the migrations the file has not seen, each in its own
// transaction with its version bump (BEGIN IMMEDIATE locks the file, so
// two openers cannot both apply one). A file from a newer release is
// refused rather than misread.
func migrate(ctx context.Context, db *sql.DB) error {
	for {
		done, err := migrateOne(ctx, db)
		if err != nil || done {
			return err
		}
	}
}

func migrateOne(ctx context.Context, db *sql.DB) (done bool, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("migrate: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	var v int
	if err := tx.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&v); err != nil {
		return false, fmt.Errorf("migrate: %w", err)
	}
	switch {
	case v == len(migrations):
		return true, nil
	case v > len(migrations):
		return false, fmt.Errorf("schema version %d is newer than this build knows (%d): upgrade caddy-agentwrit", v, len(migrations))
	}
	if err := migrations[v](ctx, tx); err != nil {
		return false, fmt.Errorf("migrate to version %d: %w", v+1, err)
	}
	// PRAGMA takes no parameters; v is an int.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, v+1)); err != nil {
		return false, fmt.Errorf("migrate to version %d: %w", v+1, err)
	}
	return false, tx.Commit()
}
