package sqlite

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// TestMigrateFromFirstRelease: a file written by the first release (one
// key in meta, no version) opens with its key as the active one and its
// data intact.
func TestMigrateFromFirstRelease(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	require.NoError(t, prepareFile(path))
	raw, err := sql.Open("sqlite", "file:"+path)
	require.NoError(t, err)
	tx, err := raw.Begin()
	require.NoError(t, err)
	require.NoError(t, migrations[0](ctx, tx))
	_, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	pemKey, err := broker.MarshalKeyPEM(key)
	require.NoError(t, err)
	_, err = tx.Exec(`INSERT INTO meta(key, value) VALUES ('signing_key', ?)`, pemKey)
	require.NoError(t, err)
	_, err = tx.Exec(`INSERT INTO revocations(level, target, revoked_at) VALUES ('task', 'old-task', '2026-11-28T10:00:00Z')`)
	require.NoError(t, err)
	require.NoError(t, tx.Commit())
	require.NoError(t, raw.Close())

	db, err := Open(ctx, path, Options{})
	require.NoError(t, err)
	defer db.Close()
	keys, err := db.SigningKeys(ctx)
	require.NoError(t, err)
	require.Len(t, keys, 1)
	require.True(t, keys[0].Private.Equal(key), "the first release's key signs on")
	require.True(t, keys[0].RetireAt.IsZero())
	revs, err := db.RevocationsSince(ctx, 0, 10)
	require.NoError(t, err)
	require.Len(t, revs, 1)
	var v int
	require.NoError(t, db.db.QueryRow(`PRAGMA user_version`).Scan(&v))
	require.Equal(t, len(migrations), v)

	// Reopening migrates nothing again.
	require.NoError(t, db.Close())
	db2, err := Open(ctx, path, Options{})
	require.NoError(t, err)
	require.NoError(t, db2.Close())
}

// TestNewerSchemaRefused: a file from a newer release is not misread.
func TestNewerSchemaRefused(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	db, err := Open(ctx, path, Options{})
	require.NoError(t, err)
	_, err = db.db.Exec(`PRAGMA user_version = 99`)
	require.NoError(t, err)
	require.NoError(t, db.Close())
	_, err = Open(ctx, path, Options{})
	require.ErrorContains(t, err, "newer than this build")
}
