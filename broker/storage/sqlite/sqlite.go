// Package sqlite is the broker's Database in one SQLite file, the default
// for a single node. It uses modernc.org/sqlite (pure Go, no cgo), WAL,
// synchronous=FULL and a single connection: every write is serialized in
// this process, so two configurations of one Caddy sharing the handle
// (during a reload) never see "database is locked", and everything
// acknowledged survives a crash.
//
// The file, its -wal and -shm companions and the folder the broker creates
// for them are owner-only (0600, 0700), and an existing file that group or
// others can read is refused: it holds the private signing keys.
//
// One process owns the file. For several replicas, use PostgreSQL.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sync"

	_ "modernc.org/sqlite" // pure-Go SQLite driver, registered as "sqlite"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// Options configure Open.
type Options struct {
	// ReadOnly opens an existing file without writing anything: no
	// migration, no key creation (for offline verification and backups).
	ReadOnly bool
}

// DB is a broker.Database in an SQLite file.
type DB struct {
	db   *sql.DB
	path string
	ro   bool

	mu      sync.Mutex // guards watchers
	watches map[*watcher]struct{}
}

var _ broker.Database = (*DB)(nil)

// Open opens (creating if needed) the database at path and migrates its
// schema to the current version.
func Open(ctx context.Context, path string, o Options) (*DB, error) {
	if path == "" {
		return nil, fmt.Errorf("open %w: empty database path", broker.ErrBadConfig)
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	if o.ReadOnly {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("open database %s: %w", path, err)
		}
	} else if err := prepareFile(path); err != nil {
		return nil, err
	}
	if err := checkPermissions(path); err != nil {
		return nil, err
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "foreign_keys(on)")
	if o.ReadOnly {
		q.Set("mode", "ro")
	} else {
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous(FULL)")
		q.Set("_txlock", "immediate")
	}
	sdb, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	// One connection: every write is serialized in-process.
	sdb.SetMaxOpenConns(1)
	d := &DB{db: sdb, path: path, ro: o.ReadOnly, watches: map[*watcher]struct{}{}}
	if !o.ReadOnly {
		if err := migrate(ctx, sdb); err != nil {
			sdb.Close()
			return nil, fmt.Errorf("open database %s: %w", path, err)
		}
		// SQLite creates -wal and -shm with the main file's mode; check
		// them too, now that they exist.
		if err := checkPermissions(path); err != nil {
			sdb.Close()
			return nil, err
		}
	}
	return d, nil
}

// prepareFile creates the folder (0700) and an empty database file (0600)
// when they do not exist, whatever the umask, so no other user ever gets a
// window to read the signing key.
func prepareFile(path string) error {
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create database folder: %w", err)
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("create database folder: %w", err)
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case errors.Is(err, fs.ErrExist):
		return nil
	case err != nil:
		return fmt.Errorf("create database: %w", err)
	}
	defer f.Close()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	return nil
}

// checkPermissions refuses a database file (or its -wal/-shm) that group
// or others may read or write.
func checkPermissions(path string) error {
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) && p != path {
			continue
		}
		if err != nil {
			return fmt.Errorf("database %s: %w", p, err)
		}
		if m := fi.Mode().Perm(); m&0o077 != 0 {
			return fmt.Errorf("%w: database file %s has mode %04o, so other users can read the broker's signing key; run: chmod 600 %s",
				broker.ErrBadConfig, p, m, p)
		}
	}
	return nil
}

// Info implements broker.Database.
func (d *DB) Info() broker.DatabaseInfo {
	return broker.DatabaseInfo{Kind: "sqlite", Location: d.path}
}

// Ping implements broker.Database.
func (d *DB) Ping(ctx context.Context) error { return d.db.PingContext(ctx) }

// Close implements broker.Database.
func (d *DB) Close() error { return d.db.Close() }

// watcher is one Watch call's channel.
type watcher struct{ ch chan broker.Change }

// Watch implements broker.Database. Only this process writes the file, so
// notices come from this handle's own commits.
func (d *DB) Watch(ctx context.Context, notify func(broker.Change)) error {
	w := &watcher{ch: make(chan broker.Change, 64)}
	d.mu.Lock()
	d.watches[w] = struct{}{}
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.watches, w)
		d.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case c := <-w.ch:
			notify(c)
		}
	}
}

// changed tells every watcher about c; a full channel means a catch-up is
// already due, so nothing is lost by dropping the notice.
func (d *DB) changed(c broker.Change) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for w := range d.watches {
		select {
		case w.ch <- c:
		default:
		}
	}
}

// inTx runs f in a transaction (BEGIN IMMEDIATE: writers are serialized).
func (d *DB) inTx(ctx context.Context, f func(*sql.Tx) error) error {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	if err := f(tx); err != nil {
		return err
	}
	return tx.Commit()
}
