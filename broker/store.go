package broker

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	_ "modernc.org/sqlite" // pure-Go SQLite driver, registered as "sqlite"
)

// Store is the broker's durable state and the in-memory indexes built from
// it: the signing key, apps, launch tokens, agents, revocations, the audit
// chain, and (in memory only) outstanding nonces.
//
// One Store may serve several Brokers at once: during a Caddy reload the new
// configuration starts before the old one stops, and both must see the same
// revocations and audit chain. The Caddy side keeps a Store per database
// path in a usage pool and closes it when the last user is gone.
type Store struct {
	db          *sql.DB
	path        string
	key         ed25519.PrivateKey
	revocations *revocationIndex
	nonces      *nonceStore
	audit       *auditLog

	closeOnce sync.Once
	stop      chan struct{}
	done      chan struct{}
}

const schema = `
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
);
`

// Open opens (creating if needed) the SQLite database at path and loads the
// signing key, revocations and the audit chain's tail into memory.
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" {
		return nil, fmt.Errorf("open store: %w: empty database path", ErrBadConfig)
	}
	if path != ":memory:" {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
	}
	dsn := "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	// One connection: every write is serialized in-process, so two brokers
	// sharing this Store can never see "database is locked".
	db.SetMaxOpenConns(1)
	s := &Store{
		db:          db,
		path:        path,
		revocations: newRevocationIndex(),
		nonces:      newNonceStore(defaultMaxNonces),
		stop:        make(chan struct{}),
		done:        make(chan struct{}),
	}
	if err := s.init(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	go s.janitor()
	return s, nil
}

func (s *Store) init(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, schema); err != nil {
		return fmt.Errorf("schema: %w", err)
	}
	key, err := s.loadOrCreateKey(ctx)
	if err != nil {
		return err
	}
	s.key = key
	if err := s.revocations.load(ctx, s.db); err != nil {
		return err
	}
	s.audit, err = loadAuditLog(ctx, s.db)
	return err
}

func (s *Store) loadOrCreateKey(ctx context.Context) (ed25519.PrivateKey, error) {
	var b []byte
	err := s.db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'signing_key'`).Scan(&b)
	if err == nil {
		return parseKeyPEM(b)
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	pemb, err := marshalKeyPEM(k)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	// INSERT OR IGNORE then re-read: safe even if another process raced us.
	if _, err := s.db.ExecContext(ctx, `INSERT OR IGNORE INTO meta(key, value) VALUES ('signing_key', ?)`, pemb); err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	if err := s.db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'signing_key'`).Scan(&b); err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	return parseKeyPEM(b)
}

// Path is the database path the Store was opened with.
func (s *Store) Path() string { return s.path }

// Close stops background work and closes the database. It is idempotent.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		err = s.db.Close()
	})
	return err
}

// janitor prunes expired nonces and long-expired launch tokens so memory and
// the database cannot grow without bound (D10).
func (s *Store) janitor() {
	defer close(s.done)
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.nonces.prune(now)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			// Keep a day of history so "expired" stays distinguishable from "not found".
			_, _ = s.db.ExecContext(ctx, `DELETE FROM launch_tokens WHERE expires_at < ?`, now.Add(-24*time.Hour).Unix())
			cancel()
		}
	}
}
